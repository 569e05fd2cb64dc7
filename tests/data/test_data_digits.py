"""The digits export: verified in memory, then written atomically like a download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from reglab.config.data import DataFile
from reglab.data.digits import export_digits, load_digits_arrays
from reglab.data.errors import DataError
from reglab.data.idx import encode_idx, read_idx

DIGITS_YAML = Path(__file__).resolve().parents[2] / "conf/data/digits.yaml"


def test_export_writes_the_configured_files_and_a_changed_release_writes_nothing(
    tmp_path: Path,
):
    entries = yaml.safe_load(DIGITS_YAML.read_text())["files"]
    files = {key: DataFile(**entry) for key, entry in entries.items()}
    paths = export_digits(files, tmp_path / "raw")

    arrays = load_digits_arrays()
    for key, path in paths.items():
        assert (read_idx(path) == arrays[key]).all()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == files[key].sha256
    assert sorted(path.name for path in (tmp_path / "raw").iterdir()) == sorted(
        entry.filename for entry in files.values()
    )

    expected = hashlib.sha256(encode_idx(arrays["train_labels"])).hexdigest()
    stale = {"train_labels": DataFile("labels-idx1-ubyte", "0" * 64)}
    with pytest.raises(DataError) as caught:
        export_digits(stale, tmp_path / "other")
    assert str(caught.value) == (
        f"labels-idx1-ubyte: scikit-learn's digits have SHA-256 {expected}, expected "
        f"{'0' * 64}; update data.files.train_labels.sha256 in conf/data/digits.yaml "
        "if the new data is intended"
    )
    assert list((tmp_path / "other").iterdir()) == []
