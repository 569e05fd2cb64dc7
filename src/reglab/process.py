"""How a reglab process ends: after every exit callback, without the interpreter's teardown.

Importing this module registers :func:`_exit_without_teardown` as an exit
callback. Callbacks run last-registered first, and the entry points (the stage
modules, the ``reglab`` command) import this module before TensorFlow, MLflow or
Ray, so it runs after theirs: MLflow has drained its logging queues and Ray has
disconnected by then. What a normal exit would still do is free every module
and object of TensorFlow, MLflow, pandas and matplotlib one by one: 2 to 4 s of
wall time here (see bench/README.md), for nothing a process leaves behind.
:func:`os._exit` skips it. Only logging's own callback is registered before this
one (logging is imported first), so it is called here.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

# The exit code :func:`end` was given; None for a process that did not call it
# (an uncaught exception, a test calling an entry point's body), which then
# exits the usual way.
_exit_code: int | None = None


def _exit_without_teardown() -> None:
    if _exit_code is None:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_exit_code)


atexit.register(_exit_without_teardown)


def end(code: int) -> None:
    """End the process with ``code`` (now, if it is not 0) and no teardown at its exit."""
    global _exit_code
    _exit_code = code
    if code:
        sys.exit(code)
