"""The command line: compose the config, check params.yaml, train ad hoc (Hydra's grammar).

reglab compose experiment=full                 # print the composed params
reglab compose --output params.yaml            # what `make params` runs
reglab check                                   # validate params.yaml against conf/
reglab train variant=l2 train.epochs=2         # one variant, each seed in `seeds`
reglab train -m variant=l1,l2 'variants.l2.kernel.l2=1e-4,1e-3'
reglab tune search=l2_strength tune.n_trials=40 tune.address=HEAD:6379
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reglab import process
from reglab.config.compose import PARAMS_FILE, compose, conf_dir, load_params, to_yaml
from reglab.config.schema import register_schema, validate
from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic

log = logging.getLogger("reglab")
USAGE = "usage: reglab {train,compose,check,tune} [options or hydra overrides...]"


def train_job(cfg: DictConfig) -> float | None:
    """One Hydra job: validate, train the chosen variant under each seed.

    Returns the best validation data loss (of the first seed), which a Hydra
    sweeper can minimise.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    variant = container.pop("variant")
    container.pop("hydra", None)
    try:
        config = validate(container)
        config.variant(variant)  # an unknown variant fails before TensorFlow loads
        import keras

        from reglab.config.paths import run_key
        from reglab.train.run import train_variant

        results = []
        for seed in config.seeds:
            keras.backend.clear_session()  # multirun jobs share the process
            results.append(train_variant(config, run_key(variant, seed)))
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
    config = load_params(args.params)
    log.info(
        "%s is valid and fresh: %d variants %s",
        args.params,
        len(config.variants),
        sorted(config.variants),
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "compose", "check", "tune"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # `mlflow run` passes an empty `overrides` parameter as ''; it means none.
    command, rest = argv[0], [arg for arg in argv[1:] if arg.strip()]
    try:
        if command == "compose":
            sys.exit(compose_command(rest))
        if command == "check":
            sys.exit(check_command(rest))
        if command == "tune":
            from reglab.tune.cli import tune_command

            tune_command(rest)
            return
        if not {"-m", "--multirun"} & set(rest):
            precheck(rest)  # before Hydra makes a run folder for a run that cannot start
        import hydra

        register_schema()
        app = hydra.main(config_path=str(conf_dir()), config_name="cli", version_base=None)(
            train_job
        )
        sys.argv = [sys.argv[0], *rest]
        app()
    except ReglabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """The ``reglab`` command and ``python -m reglab``: :func:`main`, then the process
    ends through :func:`reglab.process.end` (no interpreter teardown at its exit)."""
    try:
        main()
    except SystemExit as exit:
        if exit.code is not None and not isinstance(exit.code, int):
            raise
        process.end(exit.code or 0)
    else:
        process.end(0)


if __name__ == "__main__":
    run()
