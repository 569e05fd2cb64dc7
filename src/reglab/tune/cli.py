"""`reglab tune search=<name> [overrides]`: search, then train and test the best variant.

The outputs go where conf/tune_cli.yaml says (outputs/tune/...), so an ad-hoc
search never writes over the pipeline's reports. Every check runs before Ray,
TensorFlow or any output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reglab.config.compose import compose
from reglab.config.schema import Config, validate
from reglab.config.checks import ConfigError

log = logging.getLogger(__name__)


def split_search(overrides: list[str]) -> tuple[str, list[str]]:
    """The ``search=<name>`` override and the others (Hydra's grammar for the rest)."""
    names = [item.partition("=")[2] for item in overrides if item.startswith("search=")]
    rest = [item for item in overrides if not item.startswith("search=")]
    if len(names) != 1 or not names[0]:
        raise ConfigError("search: name one search, e.g. `reglab tune search=l2_strength`")
    return names[0], rest


def tune_command(overrides: list[str]) -> dict[str, Any]:
    """Validate everything, run the search, train and test ``<search>_best``."""
    import reglab.stages  # noqa: F401  (TensorFlow's and MLflow's chatter out, as in a stage)

    name, rest = split_search(overrides)
    config = validate(compose(rest, config_name="tune_cli"))
    from reglab.tune.search import check_inputs

    check_inputs(config, name)
    from reglab.tune.results import write_outputs
    from reglab.tune.search import run_search

    outcome = run_search(config, name)
    out = Path(config.paths.tune, name)
    write_outputs(outcome, out)
    log.info("%s: wrote %s", name, out)
    return {"search": name, "best": outcome.best.params, "runs": train_and_test_best(config, name)}


def train_and_test_best(config: Config, name: str) -> list[str]:
    """``<search>_best`` under each seed: trained like any variant, tested once."""
    from reglab.config.paths import run_key
    from reglab.stages.evaluate import train_and_evaluate
    from reglab.tune.best import with_best_variant
    from reglab.tune.search import best_variant_name

    config = with_best_variant(config, name)
    keys = [run_key(best_variant_name(name), seed) for seed in config.seeds]
    for key in keys:
        train_and_evaluate(config, key)
    return keys
