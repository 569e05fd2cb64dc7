"""Hyperparameter search: Optuna's TPE sampler on Ray Tune, with ASHA stopping bad trials.

- :mod:`reglab.tune.search`: a search's checks, state folder and MLflow parent run
  (the schema of a search is in :mod:`reglab.config.schema`)
- :mod:`reglab.tune.engine`: the Ray Tune run (Optuna's sampler, ASHA, resume)
- :mod:`reglab.tune.trial`: one trial, ``reglab.train.run.train_variant`` with a reporting hook
- :mod:`reglab.tune.results`: best.yaml, trials.csv and the figures
- :mod:`reglab.tune.best`: the variant ``<search>_best`` a best.yaml defines
- :mod:`reglab.tune.outcome`: the trials and the best of them
"""
