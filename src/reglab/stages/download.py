"""Stage `download`: a verified copy of every raw file of the data set in paths.raw."""

from __future__ import annotations

import os
from pathlib import Path

from reglab.config.data import USER_FORMATS
from reglab.data.digits import export_digits
from reglab.data.sources import fetch_files, resolve_mirrors
from reglab.data.userdata import note_local_source
from reglab.stages import read_config, run_stage


def main(argv: list[str]) -> None:
    config = read_config()
    data, raw = config.data, Path(config.paths.raw)
    if data.format in USER_FORMATS:
        note_local_source(raw, data.format, Path(data.path))
        return
    if data.format == "sklearn_digits":
        export_digits(data.files, raw)
        return
    fetch_files(
        data.files,
        resolve_mirrors(data.mirrors, data.extra_mirrors, os.environ),
        raw,
        timeout_s=data.download.timeout_s,
        retries=data.download.retries,
        backoff_s=data.download.backoff_s,
    )


if __name__ == "__main__":
    run_stage(main)
