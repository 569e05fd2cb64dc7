"""The download and preprocess stages, run on a params.yaml composed from the real conf/."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from reglab.config.compose import compose, to_yaml
from reglab.core.io import file_mode
from reglab.data.digits import load_digits_arrays
from reglab.data.prepare import load_manifest, load_splits
from reglab.data.sources import MIRRORS_ENV
from reglab.stages import download, preprocess, run_stage

# The full tier: the real data stages in subprocesses.
pytestmark = pytest.mark.slow

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
    _params(project, ["data=digits", "data.split_seed=11"])

    download.main([])
    raw = project / "data/raw"
    assert sorted(path.name for path in raw.iterdir()) == [
        "digits-images-idx3-ubyte",
        "digits-labels-idx1-ubyte",
    ]
    labels = (raw / "digits-labels-idx1-ubyte").read_bytes()
    assert labels[:8] == bytes.fromhex("0000080100000705")  # 1,797 labels
    # The io policy: the mode a plain open() gives under the umask (0o644 under 022).
    assert stat.S_IMODE((raw / "digits-labels-idx1-ubyte").stat().st_mode) == file_mode()

    preprocess.main([])
    processed = project / "data/processed"
    manifest = load_manifest(processed)
    assert manifest["dataset"] == "digits"
    assert manifest["split_seed"] == 11
    assert manifest["sizes"] == {"train": 1137, "val": 300, "test": 360}
    assert manifest["source"]["test_split"] == (
        "held out: a stratified split of 360 of the 1797 images with test_holdout_seed=0 "
        "(the data set has no official test split)"
    )
    assert manifest["scaling"] == "float32(raw pixel) / 16"
    assert [sum(counts) for counts in manifest["class_counts"].values()] == [360, 1137, 300]
    splits = load_splits(processed)
    train_x, train_y = splits["train"]
    assert train_x.shape == (1137, 8, 8, 1) and train_x.stored.dtype == np.uint8
    assert int(train_x.stored.max()) == 16 and int(train_x.stored.min()) == 0
    assert train_x.pixel_max == 16.0 and train_x[:].dtype == np.float32
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


def _digits_stages(folder: Path, split_seed: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Download and preprocess the digits in ``folder``; return the processed folder."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    _params(folder, ["data=digits", f"data.split_seed={split_seed}"])
    download.main([])
    preprocess.main([])
    return folder / "data/processed"


def _indices(images: np.ndarray) -> list[int]:
    """Where each processed digit sits among scikit-learn's 1,797 (all distinct)."""
    raw = load_digits_arrays()["train_images"]
    scaled = raw.astype(np.float32) / np.float32(16)  # as preprocess scales them
    position = {image.tobytes(): index for index, image in enumerate(scaled)}
    return [position[image[..., 0].tobytes()] for image in images]


def test_split_seed_moves_validation_and_the_same_split_seed_gives_the_same_bytes(
    project: Path, monkeypatch: pytest.MonkeyPatch
):
    first = _digits_stages(project / "first", 1, monkeypatch)
    again = _digits_stages(project / "again", 1, monkeypatch)
    other = _digits_stages(project / "other", 2, monkeypatch)

    assert _snapshot(again) == _snapshot(first)
    splits, reseeded = load_splits(first), load_splits(other)
    val, other_val = _indices(splits["val"][0]), _indices(reseeded["val"][0])
    assert len(val) == len(other_val) == 300
    assert val == sorted(val) and other_val == sorted(other_val)
    assert val != other_val
    # The held-out test set has its own seed: split_seed never moves it.
    assert _indices(splits["test"][0]) == _indices(reseeded["test"][0])
    assert load_manifest(other)["split_seed"] == 2


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
