"""Composition: conf/ (Hydra groups) + overrides -> the config every stage reads.

``params.yaml`` is the composition of ``conf/``: DVC's Hydra integration writes
it on ``dvc exp run -S ...``, ``make params`` (``reglab compose --output
params.yaml``) otherwise. Every stage reads it through :func:`load_params`,
which validates it and refuses one that no longer matches ``conf/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reglab.config.checks import ConfigError
from reglab.config.schema import Config, register_schema, validate
from reglab.core.digest import flatten

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
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


def load_params(
    path: str | Path = PARAMS_FILE,
    *,
    check_fresh: bool = False,
    allow_stale: bool = False,
    experiment: bool = False,
) -> Config:
    """Read and validate params.yaml; with ``check_fresh``, refuse one that is not the
    composition of conf/ beside it (``allow_stale``: warn and use it as it is).

    The pipeline's check stage, the first of all, checks freshness; the stages after
    it only validate. ``experiment`` says the file was composed with ``dvc exp run
    -S`` overrides, so it differs from the plain composition on purpose. Every error
    is one line that says how to get back to a good params.yaml.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `make params` to compose it from conf/")
    raw = OmegaConf.load(path)
    try:
        config = validate(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}; {how_to_recover(path, experiment)}") from None
    conf = path.resolve().parent / "conf"
    if check_fresh and not experiment and conf.is_dir():
        difference = stale_difference(raw, path, conf)
        if difference and not allow_stale:
            raise ConfigError(
                f"{path} is not the composition of conf/ ({difference}); run `make params` "
                f"to compose it, or set {ALLOW_STALE_ENV}=1 to use it as it is"
            )
        if difference:
            log.warning("%s is not the composition of conf/ (%s); used as it is", path, difference)
    return config


# The setting (an environment variable, read by the entry points) that runs the
# pipeline on a params.yaml that is not the composition of conf/.
ALLOW_STALE_ENV = "REGLAB_ALLOW_STALE_PARAMS"


def how_to_recover(path: Path, experiment: bool) -> str:
    """The way back to a good params.yaml that always works: compose it again.

    Under `dvc exp run -S`, DVC has already written the rejected value into
    params.yaml, and `git checkout` may not restore it (docs/faults.md)."""
    if experiment:
        return (
            f"nothing was changed but {path}: run `make params` to compose it again from "
            "conf/, then fix the -S override"
        )
    return f"nothing was changed: fix conf/ and run `make params` to compose {path} again"


def stale_difference(raw: DictConfig, path: Path, conf: Path) -> str | None:
    """Where params.yaml differs from the composition of ``conf``, or None."""
    fresh = flatten(OmegaConf.to_container(compose(config_dir=conf)))
    given = flatten(OmegaConf.to_container(raw))
    for key in sorted(set(fresh) | set(given)):
        if fresh.get(key, "<missing>") != given.get(key, "<missing>"):
            here, there = given.get(key, "missing"), fresh.get(key, "missing")
            return f"{key} is {here!r} in {path.name} but {there!r} in conf/"
    return None
