"""The download and preprocess stages, run on a params.yaml composed from the real conf/."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from reglab.config import compose, to_yaml
from reglab.data.prepare import load_manifest, load_splits
from reglab.data.sources import MIRRORS_ENV
from reglab.stages import download, preprocess, run_stage

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder: the stages read ./params.yaml and write ./data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    return tmp_path


def _params(folder: Path, overrides: list[str]) -> None:
    (folder / "params.yaml").write_text(to_yaml(compose(overrides)))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_digits_download_and_preprocess_end_to_end(project: Path):
    _params(project, ["data=digits", "seed=11"])

    download.main([])
    raw = project / "data/raw"
    assert sorted(path.name for path in raw.iterdir()) == [
        "digits-images-idx3-ubyte",
        "digits-labels-idx1-ubyte",
    ]
    labels = (raw / "digits-labels-idx1-ubyte").read_bytes()
    assert labels[:8] == bytes.fromhex("0000080100000705")  # 1,797 labels
    assert stat.S_IMODE((raw / "digits-labels-idx1-ubyte").stat().st_mode) == 0o644

    preprocess.main([])
    processed = project / "data/processed"
    manifest = load_manifest(processed)
    assert manifest["dataset"] == "digits"
    assert manifest["seed"] == 11
    assert manifest["sizes"] == {"train": 1137, "val": 300, "test": 360}
    assert manifest["source"]["test_split"] == (
        "held out: a stratified split of 360 of the 1797 images with test_holdout_seed=0 "
        "(the data set has no official test split)"
    )
    assert manifest["scaling"] == "float32(raw pixel) / 16"
    assert [sum(counts) for counts in manifest["class_counts"].values()] == [360, 1137, 300]
    splits = load_splits(processed)
    train_x, train_y = splits["train"]
    assert train_x.shape == (1137, 8, 8, 1) and train_x.dtype == np.float32
    assert float(train_x.max()) == 1.0 and float(train_x.min()) == 0.0
    assert train_y.dtype == np.int64 and set(np.unique(train_y)) == set(range(10))
    # The 1,797 digits are all distinct images, so no test image may appear elsewhere.
    test_rows = {image.tobytes() for image in splits["test"][0]}
    assert len(test_rows) == 360
    for split in ("train", "val"):
        assert not test_rows & {image.tobytes() for image in splits[split][0]}

    first = _snapshot(processed)
    download.main([])  # verified files stay; nothing changes
    preprocess.main([])
    assert _snapshot(processed) == first


def test_download_stage_failure_is_one_line_exit_2_and_leaves_raw_empty(
    project: Path, refused_url: str, capsys: pytest.CaptureFixture[str]
):
    _params(
        project,
        [
            f"data.mirrors=['{refused_url}']",
            "data.download.timeout_s=0.5",
            "data.download.retries=0",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        run_stage(download.main, [])

    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: could not fetch train-images-idx3-ubyte.gz from any of 1 mirrors: "
        f"{refused_url} (connection refused). Check the network, or add a mirror with "
        f"{MIRRORS_ENV}=url1,url2 or data.extra_mirrors\n"
    )
    assert list((project / "data/raw").iterdir()) == []


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_mirrors_from_the_environment_are_tried_first(
    project: Path, refused_url: str, monkeypatch: pytest.MonkeyPatch, caplog
):
    _params(project, [f"data.mirrors=['{refused_url}']", "data.download.retries=0"])
    monkeypatch.setenv(MIRRORS_ENV, str(FASHION))

    download.main([])

    assert sorted(path.name for path in (project / "data/raw").iterdir()) == sorted(
        path.name for path in FASHION.glob("*.gz")
    )
    assert refused_url not in caplog.text  # never needed
