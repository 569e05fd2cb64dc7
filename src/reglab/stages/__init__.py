"""One thin entry point per DVC stage: read params.yaml, call the library, write outputs.

The entry layer (these stages and :mod:`reglab.cli`) is the only code that reads
the process's environment and arguments. Importing it keeps TensorFlow's and
MLflow's own chatter out of a stage's log through their settings, unless
``REGLAB_LOG_LEVEL=DEBUG``:

- ``TF_CPP_MIN_LOG_LEVEL=3``, read when TensorFlow is first imported, keeps its
  C++ runtime's info, warning and error lines out (a real TensorFlow failure is
  raised as a Python exception). Two lines that C++ static initializers print
  while TensorFlow's libraries load, before any setting is read, still show.
- ``MLFLOW_LOGGING_LEVEL=WARNING``: MLflow's info lines (creating tables, a new
  experiment) are not the project's; nor is its artifact download bar.
- Ray's and Optuna's info lines are kept out by their loggers' levels (a search).

A setting the user made wins.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from reglab.config.compose import ALLOW_STALE_ENV, PARAMS_FILE, load_params
from reglab.config.schema import Config
from reglab.core.errors import ReglabError
from reglab.core.io import WRITE_ERRORS, WriteError

log = logging.getLogger("reglab")

LOG_LEVEL_ENV = "REGLAB_LOG_LEVEL"


def debug_logging() -> bool:
    return os.environ.get(LOG_LEVEL_ENV, "INFO").upper() == "DEBUG"


def quiet_libraries() -> None:
    """The libraries' settings for a log a user can read (module docstring)."""
    if debug_logging():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


quiet_libraries()


def in_dvc_experiment() -> str | None:
    """The name of the `dvc exp run` experiment this process runs in, if any."""
    return os.environ.get("DVC_EXP_NAME") or None


def read_config(path: str = PARAMS_FILE, check_fresh: bool = False) -> Config:
    """params.yaml, validated; with ``check_fresh``, also the composition of conf/."""
    return load_params(
        path,
        check_fresh=check_fresh,
        allow_stale=os.environ.get(ALLOW_STALE_ENV) == "1",
        experiment=in_dvc_experiment() is not None,
    )


def run_tags() -> dict[str, str]:
    """Tags every run of this process gets from its surroundings (a DVC experiment)."""
    name = in_dvc_experiment()
    return {"dvc_experiment": name} if name else {}


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_stage(stage: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run a stage's body; a ReglabError becomes one line on stderr and exit code 2."""
    setup_logging()
    try:
        stage(sys.argv[1:] if argv is None else argv)
    except ReglabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        print(f"error: {WriteError.of(error)}", file=sys.stderr)
        sys.exit(2)
