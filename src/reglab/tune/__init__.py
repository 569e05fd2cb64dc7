"""Hyperparameter search: Optuna's TPE sampler on Ray Tune, with ASHA stopping bad trials.

- :mod:`reglab.tune.search`: the Ray Tune run; each trial is ``runner.train_variant``
  with a reporting hook (the schema of a search is in :mod:`reglab.config`)
- :mod:`reglab.tune.results`: best.yaml, trials.csv and the figures
- :mod:`reglab.tune.best`: the variant ``<search>_best`` a best.yaml defines
- :mod:`reglab.tune.cli`: ``reglab tune search=<name> ...``
"""
