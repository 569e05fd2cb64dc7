"""Stage entry points: user errors are one line and exit code 2, outputs are never half-written."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reglab.core.errors import ReglabError
from reglab.stages import run_stage

# The full tier: the real stages in subprocesses.
pytestmark = pytest.mark.slow


def run_failing(error: BaseException, capsys) -> tuple[int, str]:
    def stage(argv: list[str]) -> None:
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage, [])
    return exit_info.value.code, capsys.readouterr().err


def test_user_error_is_one_line_and_exit_code_2(capsys):
    code, err = run_failing(ReglabError("variant='l3': unknown; choose one of ['l1']"), capsys)
    assert code == 2
    assert err == "error: variant='l3': unknown; choose one of ['l1']\n"


@pytest.mark.parametrize(
    ("number", "advice"),
    [
        (errno.ENOSPC, "free some disk space"),
        (errno.EACCES, "make the folder writable"),
        (errno.EROFS, "the file system is read-only"),
    ],
)
def test_write_errors_name_the_file_and_what_to_do(capsys, number, advice):
    error = OSError(number, os.strerror(number), "models/l2/model.keras")
    code, err = run_failing(error, capsys)
    assert code == 2
    assert err.startswith(f"error: cannot write models/l2/model.keras: {os.strerror(number)}; ")
    assert advice in err and err.count("\n") == 1


def test_other_errors_keep_their_traceback(capsys):
    with pytest.raises(ValueError, match="a bug"):
        run_stage(lambda argv: (_ for _ in ()).throw(ValueError("a bug")), [])


def test_a_file_where_the_output_folder_belongs_is_a_clear_error(tmp_path, data_dir):
    """For real: the train stage cannot create models/ because a file is there."""
    from reglab.config.compose import compose, to_yaml
    from tests.conftest import DIGITS

    (tmp_path / "data").symlink_to(data_dir)
    (tmp_path / "params.yaml").write_text(to_yaml(compose(DIGITS + ["train.epochs=1"])))
    (tmp_path / "models").write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "reglab.stages.train", "baseline@42"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write")
    assert "models" in last and "a file stands where a folder is expected" in last
    assert (tmp_path / "models").read_text() == "not a folder"
    assert not Path(tmp_path, "reports").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A real file system of 300 KB, full before a model fits (root can mount a tmpfs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_saving_the_model_is_one_line_and_leaves_nothing(
    tmp_path, data_dir, full_disk
):
    from mlflow import MlflowClient

    from reglab.config.compose import compose, to_yaml
    from tests.conftest import DIGITS

    (tmp_path / "data").symlink_to(data_dir)
    overrides = ["train.epochs=1", "tracking.log_model=false", f"paths.models={full_disk}/models"]
    (tmp_path / "params.yaml").write_text(to_yaml(compose(DIGITS + overrides)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "reglab.stages.train", "baseline@42"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {full_disk}/models/baseline@42/model.keras: No space left on "
        "device; free some disk space, then run the stage again"
    )
    assert [path.name for path in full_disk.rglob("*")] == ["models"]  # nothing half-written
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reglab").experiment_id
    (run,) = client.search_runs([experiment], "tags.variant = 'baseline'")
    assert run.info.status == "FAILED"
