"""DVC stage `evaluate_best@<search>-<seed>`: test ``<search>_best@<seed>`` once, as the
evaluate stage tests every variant."""

from reglab.compose import load_params
from reglab.errors import ReglabError
from reglab.paths import parse_run_key
from reglab.stages import run_stage
from reglab.stages.evaluate import evaluate_run
from reglab.tune.best import search_of, with_best_variant


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.evaluate_best <search>_best@<seed>")
    variant, _ = parse_run_key(argv[0])
    name = search_of(variant)
    if name is None:
        raise ReglabError(f"{argv[0]!r}: expected <search>_best@<seed>")
    evaluate_run(with_best_variant(load_params(), name), argv[0])


if __name__ == "__main__":
    run_stage(main)
