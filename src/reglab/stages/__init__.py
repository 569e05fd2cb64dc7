"""One thin entry point per DVC stage: read params.yaml, call the library, write outputs."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

from reglab.errors import ReglabError

log = logging.getLogger("reglab")

# Failures to write an output that a user fixes outside the project. Outputs are
# written to a temporary name and renamed, so none is left half-written.
WRITE_ERRORS = {
    errno.ENOSPC: "free some disk space, then run the stage again",
    errno.EDQUOT: "free some of your disk quota, then run the stage again",
    errno.EACCES: "make the folder writable for this user, then run the stage again",
    errno.EPERM: "make the folder writable for this user, then run the stage again",
    errno.EROFS: "the file system is read-only; point paths.* in conf/ somewhere writable",
    errno.ENOTDIR: "a file stands where a folder is expected; move it or change paths.* in conf/",
    errno.EEXIST: "a file stands where a folder is expected; move it or change paths.* in conf/",
}


def run_stage(stage: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run a stage's body; a ReglabError becomes one line on stderr and exit code 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=os.environ.get("REGLAB_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        stage(sys.argv[1:] if argv is None else argv)
    except ReglabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        advice = WRITE_ERRORS.get(error.errno)
        if advice is None:
            raise
        where = f" {error.filename}" if error.filename else ""
        print(f"error: cannot write{where}: {error.strerror}; {advice}", file=sys.stderr)
        sys.exit(2)
