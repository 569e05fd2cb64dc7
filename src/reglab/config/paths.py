"""How one training result is named on disk: the run key.

A run key is ``<variant>@<seed>``: the variant's name and the training seed.
It names the model folder (``<paths.models>/<key>``), the history CSV and the
eval report alike, so a variant's result under seed S is one file whichever
way S was asked for. It is parsed once, where it enters (a stage's argument, a
file name), into a :class:`RunKey`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from reglab.core.errors import ReglabError

SEED_SEPARATOR = "@"


class RunKeyError(ReglabError):
    """A run key is not ``<variant>@<seed>``."""


class RunKey(NamedTuple):
    """``l2@42``: variant ``l2`` trained under seed 42."""

    variant: str
    seed: int

    @classmethod
    def parse(cls, key: str | RunKey) -> RunKey:
        if isinstance(key, RunKey):
            return key
        variant, separator, seed = key.rpartition(SEED_SEPARATOR)
        if not separator or not variant or not seed.isdigit():
            raise RunKeyError(
                f"{key!r}: expected <variant>{SEED_SEPARATOR}<seed>, "
                f"e.g. baseline{SEED_SEPARATOR}42"
            )
        return cls(variant, int(seed))

    def __str__(self) -> str:
        return f"{self.variant}{SEED_SEPARATOR}{int(self.seed)}"


def run_key(variant: str, seed: int) -> str:
    """``l2@42``: the text of :class:`RunKey` ``(variant, seed)``."""
    return str(RunKey(variant, int(seed)))


def model_dir(models: str | Path, key: str | RunKey) -> Path:
    return Path(models, str(key))


def history_file(history: str | Path, key: str | RunKey) -> Path:
    return Path(history, f"{key}.csv")


def run_record_file(runs: str | Path, key: str | RunKey) -> Path:
    """The MLflow run of a trained model (outside DVC's outputs)."""
    return Path(runs, f"{key}.json")


def eval_file(eval_dir: str | Path, key: str | RunKey) -> Path:
    return Path(eval_dir, f"{key}.json")


def metrics_file(metrics_dir: str | Path, key: str | RunKey) -> Path:
    return Path(metrics_dir, f"{key}.json")
