"""How one training result is named on disk: the run key.

A run key is ``<variant>@<seed>``: the variant's name and the training seed.
It names the model folder (``<paths.models>/<key>``), the history CSV and the
eval report alike, so a variant's result under seed S is one file whichever
way S was asked for.
"""

from __future__ import annotations

from pathlib import Path

from reglab.core.errors import ReglabError

SEED_SEPARATOR = "@"


class RunKeyError(ReglabError):
    """A run key is not ``<variant>@<seed>``."""


def run_key(variant: str, seed: int) -> str:
    """``l2@42``: variant ``l2`` trained under seed 42."""
    return f"{variant}{SEED_SEPARATOR}{int(seed)}"


def parse_run_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`run_key`."""
    variant, separator, seed = key.rpartition(SEED_SEPARATOR)
    if not separator or not variant or not seed.isdigit():
        raise RunKeyError(
            f"{key!r}: expected <variant>{SEED_SEPARATOR}<seed>, e.g. baseline{SEED_SEPARATOR}42"
        )
    return variant, int(seed)


def model_dir(models: str | Path, key: str) -> Path:
    return Path(models, key)


def history_file(history: str | Path, key: str) -> Path:
    return Path(history, f"{key}.csv")


def eval_file(eval_dir: str | Path, key: str) -> Path:
    return Path(eval_dir, f"{key}.json")


def metrics_file(metrics_dir: str | Path, key: str) -> Path:
    return Path(metrics_dir, f"{key}.json")
