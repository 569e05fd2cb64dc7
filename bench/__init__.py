"""Benchmarks of the product on this machine: the train stage and the pipeline against
tutorial scripts (bench/whole.py), the search's throughput and epochs
(bench/tune_benchmark.py). Their figures live in bench/README.md."""
