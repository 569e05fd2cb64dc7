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
  experiment) are not the project's; nor is its artifact download bar, nor the
  "View run ... at http://..." line it prints when a run on a server ends
  (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``).
- Ray's and Optuna's info lines are kept out by their loggers' levels (a search).

A setting the user made wins. The library takes what it needs from the
environment as arguments: :func:`read_config` puts the user's
MLFLOW_TRACKING_URI in ``tracking.uri``, :func:`run_tags` names `mlflow run`'s
launcher run as every run's parent, :func:`search_arguments` hands a search
RAY_ADDRESS and its workers' settings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

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
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


quiet_libraries()


def in_dvc_experiment() -> str | None:
    """The name of the `dvc exp run` experiment this process runs in, if any."""
    return os.environ.get("DVC_EXP_NAME") or None


def read_config(path: str = PARAMS_FILE, check_fresh: bool = False) -> Config:
    """params.yaml, validated, with the user's tracking settings (:func:`with_user_tracking`);
    with ``check_fresh``, also the composition of conf/."""
    config = load_params(
        path,
        check_fresh=check_fresh,
        allow_stale=os.environ.get(ALLOW_STALE_ENV) == "1",
        experiment=in_dvc_experiment() is not None,
    )
    return with_user_tracking(config, mlflow_settings())


def mlflow_settings() -> dict[str, str]:
    """The MLflow settings (MLFLOW_*) the user made in this process's environment.

    Read before the process's first run: MLflow writes some of them itself
    (``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI, a run's end unsets
    MLFLOW_RUN_ID), which a later job of the same process (a multirun) must not
    take for the user's.
    """
    return {name: value for name, value in os.environ.items() if name.startswith("MLFLOW_")}


def with_user_tracking(
    config: Config, user: Mapping[str, str], environ: MutableMapping[str, str] = os.environ
) -> Config:
    """``config`` with the user's MLFLOW_TRACKING_URI, which wins over ``tracking.uri``;
    MLflow's HTTP retries to a tracking server bounded by ``tracking.server_wait_s``.

    MLflow's retries have no setting but its MLFLOW_HTTP_REQUEST_* variables, read at
    each request: they are set here in ``environ``, before the first request, for
    this config (each job of a multirun has its own wait), unless the user set them.
    """
    uri = user.get("MLFLOW_TRACKING_URI") or config.tracking.uri
    if uri.startswith(("http://", "https://")):
        from reglab.config.tracking import server_wait_settings

        for name, value in server_wait_settings(config.tracking.server_wait_s).items():
            if name not in user:
                environ[name] = value
    return dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, uri=uri))


def run_tags() -> dict[str, str]:
    """Tags every run of this process gets from its surroundings: the DVC experiment;
    under `mlflow run`, the launcher's run (MLFLOW_RUN_ID) as the parent, in whose
    experiment the runs are made. Read before the process's first run (MLflow unsets
    MLFLOW_RUN_ID when a run ends)."""
    tags = {}
    name = in_dvc_experiment()
    if name:
        tags["dvc_experiment"] = name
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        tags["mlflow.parentRunId"] = launcher  # MLflow's parent tag
    return tags


# Settings of this process a search's Ray workers get too.
WORKER_SETTINGS = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_HTTP_REQUEST_")


def search_arguments() -> dict[str, Any]:
    """``run_search``'s arguments from this process's environment: RAY_ADDRESS, and the
    settings its workers get too (TensorFlow's log level, MLflow's HTTP retries).

    Ray reads two settings of its driver from the environment only; unless the user
    set them: no usage statistics, and Ray Tune's older console output, which the
    search's ``verbose=0`` keeps quiet.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    quiet_search_libraries()
    return {
        "ray_address_env": os.environ.get("RAY_ADDRESS") or None,
        "worker_env": {
            name: value for name, value in os.environ.items() if name.startswith(WORKER_SETTINGS)
        },
    }


# Info a search's driver gets from its libraries that is not the project's: Ray's
# notice that a local instance enables token authentication (a warning by level, but
# about Ray's defaults, not this search), and Optuna's "A new study created in memory".
SEARCH_NOTICES = {"ray._private.authentication.authentication_token_setup": logging.ERROR}


def quiet_search_libraries() -> None:
    """Ray's and Optuna's notices out of a search's log, by their loggers' levels, unless
    REGLAB_LOG_LEVEL=DEBUG; their real warnings and errors still show."""
    if debug_logging():
        return
    for name, level in SEARCH_NOTICES.items():
        logging.getLogger(name).setLevel(level)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


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
