"""One thin entry point per DVC stage: read params.yaml, call the library, write outputs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from reglab.errors import ReglabError
from reglab.io import WRITE_ERRORS, WriteError

log = logging.getLogger("reglab")


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
        if error.errno not in WRITE_ERRORS:
            raise
        print(f"error: {WriteError.of(error)}", file=sys.stderr)
        sys.exit(2)
