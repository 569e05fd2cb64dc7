"""One thin entry point per DVC stage: read params.yaml, call the library, write outputs.

Importing this package (which ``python -m reglab.stages.<stage>`` does before the
stage's own module) quiets TensorFlow and MLflow for a log a user can read,
unless ``REGLAB_LOG_LEVEL=DEBUG``:

- ``TF_CPP_MIN_LOG_LEVEL=3`` before TensorFlow's first import keeps its C++
  runtime's info, warning and error lines out (``failed call to cuInit``,
  ``NodeDef mentions attribute use_unbounded_threadpool``, the oneDNN notice).
  A real TensorFlow failure still shows: it is raised as a Python exception.
- Two lines come from C++ static initializers while TensorFlow's libraries load,
  before any setting is read ("All log messages before absl::InitializeLog() is
  called are written to STDERR" and ``cudart_stub.cc ... Could not find cuda
  drivers``). Nothing switches them off, so the first ``import tensorflow``
  runs with file descriptor 2 captured, and the captured text is written back
  without the lines :data:`IMPORT_NOISE` matches: filtered, not silenced.
- ``MLFLOW_LOGGING_LEVEL=WARNING``: MLflow's info lines (creating tables, a new
  experiment) are not the project's; nor is its artifact download bar.

A stage process that :func:`run_stage` ends (done, or one error line) skips the
interpreter's teardown once every exit callback has run (:mod:`reglab.process`,
imported here, before any library that registers one).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from reglab import process
from reglab.core.errors import ReglabError
from reglab.core.io import WRITE_ERRORS, WriteError

log = logging.getLogger("reglab")

# What TensorFlow's C++ libraries print while they load: absl's notice and its
# info/warning lines (``I0000 00:00:1795838468.047236   26068 cudart_stub.cc:31] ...``).
# Error and fatal lines (E, F) are kept.
IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] )"
)


def debug_logging() -> bool:
    return os.environ.get("REGLAB_LOG_LEVEL", "INFO").upper() == "DEBUG"


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there too), then write it back less ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(True) if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` (keras imports it too) in :func:`filtered_stderr`."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the other finders locate the package
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module: Any) -> None:
            with filtered_stderr(IMPORT_NOISE):
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module  # type: ignore[method-assign]
        return spec


def quiet_libraries() -> None:
    """TensorFlow's and MLflow's own chatter out of a stage's log (module docstring)."""
    if debug_logging():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


quiet_libraries()


def _is_stage_process() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec is not None and spec.name.startswith(__name__ + ".")


def _end(code: int) -> None:
    """A stage process ends through :func:`reglab.process.end`; run_stage called from
    another program (a test) only raises SystemExit for an error."""
    if _is_stage_process():
        process.end(code)
    elif code:
        sys.exit(code)


def run_stage(stage: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run a stage's body; a ReglabError becomes one line on stderr and exit code 2."""
    logging.basicConfig(
        level=os.environ.get("REGLAB_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        stage(sys.argv[1:] if argv is None else argv)
    except ReglabError as error:
        print(f"error: {error}", file=sys.stderr)
        _end(2)
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        print(f"error: {WriteError.of(error)}", file=sys.stderr)
        _end(2)
    _end(0)
