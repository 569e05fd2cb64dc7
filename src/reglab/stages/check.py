"""DVC stage `check`, the first of the pipeline: params.yaml valid and fresh, and no
other pipeline running in this project, or nothing runs.

DVC deletes a stage's outputs just before it runs the stage. Every other stage
depends on this one, so a rejected config (a bad `dvc exp run -S` value, a
hand-edited params.yaml) or a second `dvc repro` started beside a running one
stops here, within a second or two, before any output a user had is touched.
"""

import json
import os
from pathlib import Path

import psutil

from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic
from reglab.stages import read_config, run_stage


class PipelineRunning(ReglabError):
    """Another DVC process works on this project's outputs."""


def other_pipelines(rwlock: Path) -> list[dict]:
    """Live DVC processes other than ours that hold locks on outputs or dependencies.

    DVC releases its repository lock while a stage's command runs (dvc/stage/run.py
    runs it `unlocked_repo`) and locks only that stage's files, so a second `dvc
    repro` could start stages whose files the first is not using at that moment
    (the download, for one). DVC's per-file lock (.dvc/tmp/rwlock) names the PID
    and the command of every holder; DVC itself skips holders whose PID is gone.
    """
    try:
        held = json.loads(rwlock.read_text())
    except (OSError, ValueError):
        return []  # no lock file, or DVC is rewriting it: nothing we can name
    holders = list(held.get("write", {}).values())
    holders += [info for infos in held.get("read", {}).values() for info in infos]
    ours = {os.getpid(), *(process.pid for process in psutil.Process().parents())}
    found: dict[int, dict] = {}
    for info in holders:
        if info["pid"] not in ours and psutil.pid_exists(info["pid"]):
            found[info["pid"]] = info
    return list(found.values())


def main(argv: list[str]) -> None:
    running = other_pipelines(Path(".dvc/tmp/rwlock"))
    if running:
        first = running[0]
        raise PipelineRunning(
            f"another pipeline is running in this project (PID {first['pid']}: {first['cmd']}); "
            "wait for it to finish or stop it, then run again; nothing was changed"
        )
    config = read_config(check_fresh=True)
    config.model.check_source(Path.cwd())
    # The same text for every valid config: the stages after this one re-run for
    # their own params, never because this file changed.
    write_atomic(Path(config.paths.check), "params.yaml is valid and the composition of conf/\n")


if __name__ == "__main__":
    run_stage(main)
