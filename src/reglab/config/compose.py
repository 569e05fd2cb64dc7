"""Composition: conf/ (Hydra groups) + overrides -> the config every stage reads.

``params.yaml`` is the composition of ``conf/``: DVC's Hydra integration writes
it on ``dvc exp run -S ...``, ``make params`` (``reglab compose --output
params.yaml``) otherwise. Every stage reads it through :func:`load_params`,
which validates it and refuses one that no longer matches ``conf/``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reglab.config.schema import Config, register_schema, validate
from reglab.core.io import tree_digest, write_atomic
from reglab.config.checks import ConfigError

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


# Set to 1 to run the stages on a params.yaml that is not the composition of conf/.
ALLOW_STALE_ENV = "REGLAB_ALLOW_STALE_PARAMS"


def load_params(path: str | Path = PARAMS_FILE, check_fresh: bool = True) -> Config:
    """Read and validate params.yaml; refuse one that is not the composition of conf/.

    Every error is one line that says how to get back to a good params.yaml.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `make params` to compose it from conf/")
    read = functools.cache(lambda: OmegaConf.load(path))  # parsed only when needed
    config, keep = validated(read, path)
    if check_fresh:
        difference = checked_stale_difference(read, path)
        if difference and os.environ.get(ALLOW_STALE_ENV) != "1":
            raise ConfigError(
                f"{path} is not the composition of conf/ ({difference}); run `make params` "
                f"to compose it, or set {ALLOW_STALE_ENV}=1 to use it as it is"
            )
        if difference:
            log.warning("%s is not the composition of conf/ (%s); used as it is", path, difference)
    keep()  # only a params.yaml that is used: a refused one leaves nothing behind
    return config


@functools.cache
def package_digest() -> str:
    """This package's code, hashed once per process (both kept verdicts below use it)."""
    return tree_digest(Path(__file__).parent)


# The last valid params.yaml's Config, after its fingerprint's line (beside params.yaml).
VALIDATED = Path(".reglab", "params-validated.pickle")


def validated(read: Callable[[], DictConfig], path: Path) -> tuple[Config, Callable[[], None]]:
    """:func:`validate`, once per params.yaml and code, and how to keep its result.

    The schema's merge costs about half a second, in every stage, for the same file.
    The Config is kept after a line with the fingerprint of params.yaml and this
    package's code, and read back only under the same fingerprint."""
    import pickle

    kept = path.resolve().parent / VALIDATED
    fingerprint = hashlib.sha256(path.read_bytes() + b"\0" + package_digest().encode()).hexdigest()
    try:
        with kept.open("rb") as stream:
            if stream.readline().decode().strip() == fingerprint:
                return pickle.load(stream), lambda: None
    except (OSError, EOFError, pickle.UnpicklingError):
        pass  # none kept yet, or written by another version: validate
    try:
        config = validate(read())
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}; {how_to_recover(path)}") from None

    def keep() -> None:
        try:
            write_atomic(kept, fingerprint.encode() + b"\n" + pickle.dumps(config))
        except OSError as error:  # a read-only project still runs; it validates each time
            log.debug("%s: not kept (%s)", kept, error)

    return config, keep


def how_to_recover(path: Path) -> str:
    """Under `dvc exp run -S`, DVC has already written the rejected value into params.yaml."""
    if os.environ.get("DVC_EXP_NAME"):
        return (
            f"nothing was changed but {path}: fix the -S override, or restore the committed "
            f"file with `git checkout {path}`"
        )
    return f"nothing was changed: fix conf/ and run `make params`, or `git checkout {path}`"


def stale_difference(raw: DictConfig, path: Path) -> str | None:
    """Where params.yaml differs from the composition of conf/ beside it, or None.

    A `dvc exp run -S ...` composes with overrides, so it differs from the plain
    composition on purpose; DVC says so through DVC_EXP_NAME and the check is skipped.
    """
    conf = path.resolve().parent / "conf"
    if os.environ.get("DVC_EXP_NAME") or not conf.is_dir():
        return None
    fresh = flat_items(OmegaConf.to_container(compose(config_dir=conf)))
    given = flat_items(OmegaConf.to_container(raw))
    for key in sorted(set(fresh) | set(given)):
        if fresh.get(key, "<missing>") != given.get(key, "<missing>"):
            here, there = given.get(key, "missing"), fresh.get(key, "missing")
            return f"{key} is {here!r} in {path.name} but {there!r} in conf/"
    return None


# Where a fresh params.yaml's fingerprint is kept (beside it): the verdict of the
# last composition that matched it.
FRESH_FINGERPRINT = Path(".reglab", "params-fresh")


def freshness_fingerprint(path: Path, conf: Path) -> str:
    """What a composition depends on: params.yaml, every file of conf/ and this package's
    code (the schema, the composition)."""
    digest = hashlib.sha256(path.read_bytes() + b"\0")
    digest.update(tree_digest(conf, "*.yaml").encode())
    digest.update(package_digest().encode())
    return digest.hexdigest()


def checked_stale_difference(read: Callable[[], DictConfig], path: Path) -> str | None:
    """:func:`stale_difference`, composed once per fingerprint.

    Composing conf/ costs about a second, and every stage of a pipeline checks the
    same params.yaml against the same conf/: once a composition has matched, its
    fingerprint (:func:`freshness_fingerprint`) is kept, and a stage that finds the
    same fingerprint does not compose again. Any change to params.yaml, conf/ or the
    code changes the fingerprint, and the next stage composes.
    """
    conf = path.resolve().parent / "conf"
    if os.environ.get("DVC_EXP_NAME") or not conf.is_dir():
        return None
    kept = path.resolve().parent / FRESH_FINGERPRINT
    fingerprint = freshness_fingerprint(path, conf)
    try:
        if kept.read_text() == fingerprint:
            return None
    except OSError:
        pass  # none kept yet
    difference = stale_difference(read(), path)
    if difference is None:
        try:
            write_atomic(kept, fingerprint)
        except OSError as error:  # a read-only project still runs; it composes each time
            log.debug("%s: not kept (%s)", kept, error)
    return difference


def flat_items(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        items: dict[str, object] = {}
        for key, value in node.items():
            items.update(flat_items(value, f"{prefix}.{key}" if prefix else str(key)))
        return items
    return {prefix: node}
