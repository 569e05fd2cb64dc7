"""Composition: conf/ (Hydra groups) + overrides -> the config every stage reads.

``params.yaml`` is the composition of ``conf/``: DVC's Hydra integration writes
it on ``dvc exp run -S ...``, ``make params`` (``reglab compose --output
params.yaml``) otherwise. Every stage reads it through :func:`load_params`,
which validates it and refuses one that no longer matches ``conf/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reglab.config import Config, register_schema, validate
from reglab.schema import ConfigError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
PARAMS_FILE = "params.yaml"


def conf_dir() -> Path:
    """The project's conf/: the one in the working folder (where DVC runs), else ours."""
    local = Path.cwd() / "conf"
    return local if (local / "config.yaml").exists() else CONF_DIR


def compose(
    overrides: list[str] | None = None,
    config_dir: Path | None = None,
    config_name: str = "config",
) -> DictConfig:
    """Compose conf/ with Hydra overrides, exactly as DVC's Hydra integration does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register_schema()
    try:
        with initialize_config_dir(str(config_dir or conf_dir()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except HydraException as error:
        raise ConfigError(one_line(error)) from None
    OmegaConf.resolve(cfg)
    return cfg


def one_line(error: BaseException) -> str:
    """Hydra's composition error, with the reason its cause gives (a wrong type, say)."""
    message = str(error).splitlines()[0]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        message += ": " + str(cause).strip().splitlines()[0]
    return message


def to_yaml(cfg: DictConfig) -> str:
    """The same text DVC writes to params.yaml."""
    return OmegaConf.to_yaml(cfg)


def compose_config(overrides: list[str] | None = None) -> Config:
    """Compose and validate in one step (the ad-hoc command line, the tests)."""
    return validate(compose(overrides))


def load_params(path: str | Path = PARAMS_FILE, check_fresh: bool = True) -> Config:
    """Read and validate params.yaml. Warns loudly if it is not the composition of conf/."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `make params` to compose it from conf/")
    raw = OmegaConf.load(path)
    config = validate(raw)
    if check_fresh:
        is_stale(raw, path)
    return config


def is_stale(raw: DictConfig, path: Path) -> bool:
    """params.yaml edited by hand (or conf/ changed since) is worth a loud warning.

    A `dvc exp run -S ...` composes with overrides, so it differs from the plain
    composition on purpose; DVC says so through DVC_EXP_NAME and the check is skipped.
    """
    conf = path.resolve().parent / "conf"
    if os.environ.get("DVC_EXP_NAME") or not conf.is_dir():
        return False
    try:
        fresh = compose(config_dir=conf)
    except ConfigError as error:
        log.warning("conf/ does not compose (%s); params.yaml cannot be checked", error)
        return False
    if OmegaConf.to_container(fresh) != OmegaConf.to_container(raw):
        log.warning(
            "STALE CONFIG: %s differs from the composition of conf/; "
            "run `make params` (or use `dvc exp run -S ...`) so they agree",
            path,
        )
        return True
    return False
