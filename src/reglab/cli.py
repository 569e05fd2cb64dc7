"""The command line: compose the config, check params.yaml, train ad hoc (Hydra's grammar).

reglab compose experiment=full                 # print the composed params
reglab compose --output params.yaml            # what `make params` runs
reglab check                                   # validate params.yaml against conf/
reglab train variant=l2 train.epochs=2         # one variant, each seed in `seeds`
reglab train -m variant=l1,l2 'variants.l2.kernel.l2=1e-4,1e-3'
reglab tune search=l2_strength tune.n_trials=40 tune.address=HEAD:6379
reglab exps [metric]                           # one row per DVC experiment, a column per variant
reglab plots-template OUTPUT.html              # `dvc plots show`'s page with Vega inlined

This module and :mod:`reglab.stages` are the entry layer: the only code that reads
the process's environment and arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reglab.config.checks import ConfigError
from reglab.config.compose import PARAMS_FILE, compose, conf_dir, to_yaml
from reglab.config.schema import Config, register_schema, validate
from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic
from reglab.stages import (
    mlflow_settings,
    read_config,
    run_tags,
    search_arguments,
    setup_logging,
    with_user_tracking,
)

log = logging.getLogger("reglab")
COMMANDS = ("train", "compose", "check", "tune", "exps", "plots-template")
USAGE = f"usage: reglab {{{','.join(COMMANDS)}}} [options or hydra overrides...]"


def train_job(cfg: DictConfig, user: Mapping[str, str], tags: Mapping[str, str]) -> float | None:
    """One Hydra job: validate, train the chosen variant under each seed.

    ``user`` and ``tags`` are the process's MLflow settings and run tags, read once
    before the first job (MLflow rewrites some of those variables as runs start
    and end). Returns the best validation data loss (of the first seed), which a
    Hydra sweeper can minimise.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    variant = container.pop("variant")
    container.pop("hydra", None)
    try:
        config = with_user_tracking(validate(container), user)
        config.variant(variant)  # an unknown variant fails before TensorFlow loads
        import keras

        from reglab.config.paths import RunKey
        from reglab.train.run import train_variant

        results = []
        for seed in config.seeds:
            keras.backend.clear_session()  # multirun jobs share the process
            results.append(train_variant(config, RunKey(variant, seed), run_tags=tags))
    except ReglabError as error:
        # Hydra would print a traceback; a user error is one line and exit code 2.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return results[0].get("best_val_data_loss")


def precheck(overrides: list[str]) -> None:
    """Validate one run's config in well under a second, before TensorFlow or Hydra's
    run folder: the command line's own keys (variant, hydra.*) aside, it is the
    pipeline's config."""
    variant, rest = "baseline", []
    for override in overrides:
        if override.startswith("variant="):
            variant = override.partition("=")[2]
        elif not override.lstrip("+~").startswith(("hydra.", "hydra/", "hydra=")):
            rest.append(override)
    validate(compose(rest)).variant(variant)


def compose_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reglab compose")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=full")
    parser.add_argument("--output", help="write here (atomically) instead of printing")
    args = parser.parse_args(argv)
    cfg = compose(args.overrides)
    validate(cfg)
    if args.output:
        write_atomic(Path(args.output), to_yaml(cfg))
        log.info("wrote %s", args.output)
    else:
        sys.stdout.write(to_yaml(cfg))
    return 0


def check_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reglab check")
    parser.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args(argv)
    config = read_config(args.params, check_fresh=True)
    log.info(
        "%s is valid and fresh: %d variants %s",
        args.params,
        len(config.variants),
        sorted(config.variants),
    )
    return 0


def split_search(overrides: list[str]) -> tuple[str, list[str]]:
    """The ``search=<name>`` override and the others (Hydra's grammar for the rest)."""
    names = [item.partition("=")[2] for item in overrides if item.startswith("search=")]
    rest = [item for item in overrides if not item.startswith("search=")]
    if len(names) != 1 or not names[0]:
        raise ConfigError("search: name one search, e.g. `reglab tune search=l2_strength`")
    return names[0], rest


def tune_command(
    overrides: list[str], user: Mapping[str, str], tags: Mapping[str, str]
) -> dict[str, Any]:
    """`reglab tune search=<name> [overrides]`: search, then train and test the best variant.

    The outputs go where conf/tune_cli.yaml says (outputs/tune/...), so an ad-hoc
    search never writes over the pipeline's reports. Every check runs before Ray,
    TensorFlow or any output. ``user`` and ``tags`` as for :func:`train_job`.
    """
    name, rest = split_search(overrides)
    config = with_user_tracking(validate(compose(rest, config_name="tune_cli")), user)
    arguments = search_arguments()
    from reglab.tune.search import check_inputs

    check_inputs(config, name, arguments["ray_address_env"])
    from reglab.tune.results import write_outputs
    from reglab.tune.search import run_search

    outcome = run_search(config, name, **arguments)
    out = Path(config.paths.tune, name)
    write_outputs(outcome, out, config.tracking.uri)
    log.info("%s: wrote %s", name, out)
    runs = train_and_test_best(config, name, tags)
    return {"search": name, "best": outcome.best.params, "runs": runs}


def train_and_test_best(config: Config, name: str, tags: Mapping[str, str]) -> list[str]:
    """``<search>_best`` under each seed: trained like any variant, tested once."""
    from reglab.config.paths import run_key
    from reglab.train.run import train_and_evaluate
    from reglab.tune.best import with_best_variant
    from reglab.tune.outcome import best_variant_name

    config = with_best_variant(config, name)
    keys = [run_key(best_variant_name(name), seed) for seed in config.seeds]
    for key in keys:
        train_and_evaluate(config, key, run_tags=tags)
    return keys


def exps_command(argv: list[str]) -> int:
    """One row per DVC experiment, one column per variant: a headline metric's mean."""
    from reglab.report.exp_table import dvc_exp_show, table

    parser = argparse.ArgumentParser(prog="reglab exps")
    parser.add_argument("metric", nargs="?", default="test_accuracy")
    args = parser.parse_args(argv)
    sys.stdout.write(table(dvc_exp_show(), args.metric))
    return 0


def plots_template_command(argv: list[str]) -> int:
    """The page `make plots` hands to `dvc plots show --html-template`."""
    from reglab.report.offline_plots import template

    parser = argparse.ArgumentParser(prog="reglab plots-template")
    parser.add_argument("output", help="where to write the HTML template")
    args = parser.parse_args(argv)
    write_atomic(Path(args.output), template())
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    setup_logging()
    # A user's model module lives in the project folder (model.builder=examples.models.
    # resnet): `python -m reglab` and the stages import from there, as Python puts the
    # working folder first on the path for `-m`; the `reglab` console script does the same.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # `mlflow run` passes an empty `overrides` parameter as ''; it means none.
    command, rest = argv[0], [arg for arg in argv[1:] if arg.strip()]
    user, tags = mlflow_settings(), run_tags()  # before any run (train_job)
    try:
        if command == "compose":
            sys.exit(compose_command(rest))
        if command == "check":
            sys.exit(check_command(rest))
        if command == "exps":
            sys.exit(exps_command(rest))
        if command == "plots-template":
            sys.exit(plots_template_command(rest))
        if command == "tune":
            tune_command(rest, user, tags)
            return
        if not {"-m", "--multirun"} & set(rest):
            precheck(rest)  # before Hydra makes a run folder for a run that cannot start
        import hydra

        register_schema()

        def job(cfg: DictConfig) -> float | None:
            return train_job(cfg, user, tags)

        app = hydra.main(config_path=str(conf_dir()), config_name="cli", version_base=None)(job)
        sys.argv = [sys.argv[0], *rest]
        app()
    except ReglabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
