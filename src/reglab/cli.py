"""Ad-hoc command line with Hydra's override grammar, multirun sweeps included.

reglab train variant=l2 train.epochs=2
reglab train -m variant=l1,l2 'variants.l2.kernel.l2=1e-4,1e-3'
reglab compose experiment=full      # print the composed params
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig, OmegaConf

from reglab.config import compose, conf_dir, to_yaml, validate
from reglab.errors import ReglabError

log = logging.getLogger("reglab")
USAGE = "usage: reglab {train,compose} [hydra overrides...]"


def train_job(cfg: DictConfig) -> float | None:
    """One Hydra job: validate, train the chosen variant, return its best val data loss."""
    import keras

    from reglab.runner import train_variant

    container = OmegaConf.to_container(cfg, resolve=True)
    variant = container.pop("variant")
    container.pop("hydra", None)
    try:
        config = validate(container)
        keras.backend.clear_session()  # multirun jobs share the process
        summary = train_variant(config, variant)
    except ReglabError as error:
        # Hydra would print a traceback; a user error is one line and exit code 2.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary.get("best_val_data_loss")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "compose"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    # `mlflow run` passes an empty `overrides` parameter as ''; it means none.
    command, overrides = argv[0], [arg for arg in argv[1:] if arg.strip()]
    try:
        if command == "compose":
            cfg = compose(overrides)
            validate(cfg)
            sys.stdout.write(to_yaml(cfg))
            return
        import hydra

        app = hydra.main(config_path=str(conf_dir()), config_name="cli", version_base=None)(
            train_job
        )
        sys.argv = [sys.argv[0], *overrides]
        app()
    except ReglabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
