"""The user's own data: an image folder, a CSV table, a .npz, written by the tests.

Real files (PNGs made with Pillow from scikit-learn's digits, a CSV of its wine
table, arrays saved with numpy), read by the real readers and preprocess; every
bad input is one line naming the file or key, raised before any output moves.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reglab.config.checks import ConfigError
from reglab.config.compose import compose_config
from reglab.config.data import DataConfig
from reglab.data.errors import DataError
from reglab.data.prepare import (
    dataset_classes,
    load_splits,
    make_splits,
    preprocess,
    split_plan,
)
from reglab.data.table import read_csv_table

CLASSES = {0: "zero", 1: "one", 2: "three"}  # sorted: one, three, zero
PER_CLASS = 12


def digit_images(label: int, count: int = PER_CLASS, offset: int = 0) -> list[Image.Image]:
    """Digits of ``label`` upscaled to 16x16 grayscale PNG-ready images (pixels 0..240)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    chosen = np.flatnonzero(digits.target == label)[offset : offset + count]
    return [
        Image.fromarray((digits.images[index] * 15).astype(np.uint8), "L").resize(
            (16, 16), Image.Resampling.NEAREST
        )
        for index in chosen
    ]


def write_folder(root: Path, count: int = PER_CLASS, offset: int = 0, rgb_every: int = 3) -> Path:
    """One folder per class; every ``rgb_every``-th image saved as RGB (0: none)."""
    for label, name in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for number, image in enumerate(digit_images(label, count, offset)):
            if rgb_every and number % rgb_every == 0:
                image = image.convert("RGB")
            image.save(root / name / f"{number:02d}.png")
    return root


def data_config(*overrides: str) -> DataConfig:
    return compose_config(list(overrides)).data


def run_preprocess(data: DataConfig, output: Path) -> dict:
    """What the preprocess stage does with the config's data section."""
    return preprocess(
        Path(data.path),
        output,
        name=data.name,
        data_format=data.format,
        files=data.files,
        image_shape=data.image_shape,
        num_classes=data.num_classes,
        class_names=data.class_names,
        pixel_max=data.pixel_max,
        plan=split_plan(data),
        image_size=data.image_size,
        color_mode=data.color_mode,
        label_column=data.label_column,
    )


def folder_config(path: Path, *overrides: str) -> DataConfig:
    return data_config(
        "data=image_folder",
        f"data.path={path}",
        "data.validation_size=6",
        "data.test_holdout_size=9",
        *overrides,
    )


def stored(output: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.load(output / f"{split}_x.npy", allow_pickle=False),
        np.load(output / f"{split}_y.npy", allow_pickle=False),
    )


# --- image folder -------------------------------------------------------------------


def test_image_folder_classes_counts_shapes_digests_and_a_stratified_held_out_test(tmp_path):
    root = write_folder(tmp_path / "images")
    data = folder_config(root, "data.color_mode=grayscale")
    manifest = run_preprocess(data, tmp_path / "processed")

    assert manifest["class_names"] == ["one", "three", "zero"]
    assert manifest["num_classes"] == 3
    assert manifest["image_shape"] == [16, 16, 1]
    assert manifest["sizes"] == {"train": 21, "val": 6, "test": 9}
    # Stratified: the 9 held-out images are 3 of each class, validation 2 of each.
    assert manifest["class_counts"] == {"train": [7, 7, 7], "val": [2, 2, 2], "test": [3, 3, 3]}
    assert manifest["pixel_max"] == 255.0
    images, labels = stored(tmp_path / "processed", "train")
    assert images.dtype == np.uint8 and images.shape == (21, 16, 16, 1)
    assert labels.dtype == np.int64 and int(images.max()) == 240
    # One SHA-256 per source file, by its path relative to data.path, and one for the list.
    digests = manifest["source"]["file_digests"]
    assert len(digests) == 36 and list(digests) == sorted(digests)
    assert digests["zero/05.png"] == hashlib.sha256((root / "zero/05.png").read_bytes()).hexdigest()
    assert manifest["source"]["file_count"] == 36 and len(manifest["source"]["files_digest"]) == 64
    assert dataset_classes(tmp_path / "processed", data).names == ["one", "three", "zero"]
    assert dataset_classes(tmp_path / "processed", data).num_classes == 3
    # The pixels are the PNG's: a grayscale image read back equals one stored.
    test_images, test_labels = stored(tmp_path / "processed", "test")
    pngs = {
        np.asarray(Image.open(path).convert("L")).tobytes() for path in sorted(root.rglob("*.png"))
    }
    assert {image[..., 0].tobytes() for image in test_images} <= pngs


def test_the_held_out_test_set_does_not_move_with_split_seed(tmp_path):
    root = write_folder(tmp_path / "images")
    first = run_preprocess(folder_config(root, "data.color_mode=grayscale"), tmp_path / "a")
    other = folder_config(root, "data.color_mode=grayscale", "data.split_seed=7")
    second = run_preprocess(other, tmp_path / "b")
    assert np.array_equal(stored(tmp_path / "a", "test")[0], stored(tmp_path / "b", "test")[0])
    assert first["arrays"]["test_x.npy"]["sha256"] == second["arrays"]["test_x.npy"]["sha256"]
    assert not np.array_equal(stored(tmp_path / "a", "val")[0], stored(tmp_path / "b", "val")[0])
    # Nothing held out appears in training or validation.
    held_out = {image.tobytes() for image in stored(tmp_path / "b", "test")[0]}
    for split in ("train", "val"):
        assert not held_out & {image.tobytes() for image in stored(tmp_path / "b", split)[0]}


def test_rgb_mode_resize_and_class_names_from_the_config(tmp_path):
    root = write_folder(tmp_path / "images")
    data = folder_config(
        root,
        "data.color_mode=rgb",
        "data.image_size=[12,10]",
        "data.class_names=[zero,one,three]",
    )
    manifest = run_preprocess(data, tmp_path / "processed")
    assert manifest["image_shape"] == [12, 10, 3]
    assert manifest["class_names"] == ["zero", "one", "three"]
    images, labels = stored(tmp_path / "processed", "train")
    assert images.shape == (21, 12, 10, 3) and images.dtype == np.uint8
    # Grayscale sources converted to RGB: three equal channels.
    assert np.array_equal(images[..., 0], images[..., 2])
    # Label 0 is now "zero": its training images are the digits 0 read from zero/.
    zeros = {
        np.asarray(
            Image.open(path).convert("RGB").resize((10, 12), Image.Resampling.BILINEAR)
        ).tobytes()
        for path in (root / "zero").glob("*.png")
    }
    assert {image.tobytes() for image in images[labels == 0]} <= zeros


def test_train_and_test_folders_are_the_official_split(tmp_path):
    root = tmp_path / "images"
    write_folder(root / "train", count=10, rgb_every=0)
    write_folder(root / "test", count=4, offset=10, rgb_every=0)
    data = folder_config(root, "data.test_holdout_size=null")
    manifest = run_preprocess(data, tmp_path / "processed")
    assert manifest["source"]["test_split"] == "the official test split"
    assert manifest["sizes"] == {"train": 24, "val": 6, "test": 12}
    assert manifest["class_counts"]["test"] == [4, 4, 4]
    assert manifest["image_shape"] == [16, 16, 1]
    assert "test/zero/03.png" in manifest["source"]["file_digests"]
    assert len(manifest["source"]["file_digests"]) == 42
    # The official test images are the ones under test/, none of them in training.
    test_pngs = {np.asarray(Image.open(p)).tobytes() for p in (root / "test").rglob("*.png")}
    assert {image[..., 0].tobytes() for image in stored(tmp_path / "processed", "test")[0]} == (
        test_pngs
    )
    with pytest.raises(DataError, match=r"data.test_holdout_size=9: .*set data.test_holdout_size"):
        run_preprocess(folder_config(root), tmp_path / "other")


def test_processed_data_from_other_files_or_another_path_is_refused(tmp_path):
    root = write_folder(tmp_path / "images")
    data = folder_config(root, "data.color_mode=grayscale")
    run_preprocess(data, tmp_path / "processed")
    assert load_splits(tmp_path / "processed", data)["train"][1].shape == (21,)
    # The same folder, written another way, is the same source.
    same = folder_config(f"{root}/", "data.color_mode=grayscale")
    assert load_splits(tmp_path / "processed", same)["train"][1].shape == (21,)

    moved = write_folder(tmp_path / "copy")
    with pytest.raises(DataError, match=r"data.path=.*copy"):
        load_splits(tmp_path / "processed", folder_config(moved, "data.color_mode=grayscale"))

    digit_images(1, count=1, offset=40)[0].save(root / "one" / "03.png")
    with pytest.raises(DataError, match=r"other files than .*images.*one/03.png: changed"):
        load_splits(tmp_path / "processed", data)
    (root / "one" / "03.png").unlink()
    with pytest.raises(DataError, match=r"one/03.png: removed"):
        load_splits(tmp_path / "processed", data)

    with pytest.raises(DataError, match=r"not data.class_names=\['a', 'b', 'c'\]"):
        dataset_classes(tmp_path / "processed", folder_config(root, "data.class_names=[a,b,c]"))


# --- CSV ----------------------------------------------------------------------------


def write_wine(path: Path) -> pd.DataFrame:
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    frame = wine.data.copy()
    frame["cultivar"] = [f"cultivar_{label}" for label in wine.target]
    frame.to_csv(path, index=False)
    return frame


def csv_config(path: Path, *overrides: str) -> DataConfig:
    return data_config(
        "data=csv",
        f"data.path={path}",
        "data.label_column=cultivar",
        "data.validation_size=30",
        "data.test_holdout_size=36",
        *overrides,
    )


def test_csv_features_are_standardized_with_the_training_split_alone(tmp_path):
    frame = write_wine(tmp_path / "wine.csv")
    data = csv_config(tmp_path / "wine.csv")
    manifest = run_preprocess(data, tmp_path / "processed")

    assert manifest["class_names"] == ["cultivar_0", "cultivar_1", "cultivar_2"]
    assert manifest["image_shape"] == [13] and manifest["inputs"] == "features"
    assert manifest["pixel_max"] == 1.0
    assert manifest["sizes"] == {"train": 112, "val": 30, "test": 36}
    assert sum(map(sum, manifest["class_counts"].values())) == 178
    expected_test = np.bincount(frame["cultivar"].str[-1].astype(int)) * 36 / 178
    assert np.all(np.abs(np.array(manifest["class_counts"]["test"]) - expected_test) < 1)
    digest = hashlib.sha256((tmp_path / "wine.csv").read_bytes()).hexdigest()
    assert manifest["source"]["file_digests"] == {"wine.csv": digest}

    # The statistics are those of the raw training rows, cut by the same split.
    raw = read_csv_table(tmp_path / "wine.csv", "cultivar")
    cut, _ = make_splits(raw.splits, split_plan(data))
    train_raw = cut["train"][0]
    statistics = manifest["standardization"]
    assert statistics["columns"] == list(frame.columns[:-1])
    np.testing.assert_allclose(statistics["mean"], train_raw.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(statistics["std"], train_raw.std(axis=0), rtol=1e-12)

    train_x, _ = stored(tmp_path / "processed", "train")
    assert train_x.dtype == np.float32 and train_x.shape == (112, 13)
    np.testing.assert_allclose(train_x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train_x.std(axis=0), 1, atol=1e-5)
    # No leakage: validation and test were scaled with the training statistics, so
    # they are not exactly zero-mean / unit-std themselves.
    for split in ("val", "test"):
        x, _ = stored(tmp_path / "processed", split)
        assert np.abs(x.mean(axis=0)).max() > 0.05
        np.testing.assert_allclose(
            x, (cut[split][0] - train_raw.mean(0)) / train_raw.std(0), rtol=1e-5, atol=1e-5
        )


def test_csv_integer_labels_sort_as_numbers(tmp_path):
    frame = pd.DataFrame({"a": np.arange(40.0), "label": [2, 10] * 20})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = data_config(
        "data=csv",
        f"data.path={tmp_path / 't.csv'}",
        "data.label_column=label",
        "data.validation_size=4",
        "data.test_holdout_size=4",
    )
    assert run_preprocess(data, tmp_path / "out")["class_names"] == ["2", "10"]


# --- npz ----------------------------------------------------------------------------


def test_npz_images_and_features(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target < 4
    images = digits.images[keep].astype(np.uint8)  # (N, 8, 8), values 0..16
    np.savez(tmp_path / "digits.npz", x=images, y=digits.target[keep])
    data = data_config(
        "data=npz", f"data.path={tmp_path / 'digits.npz'}", "data.pixel_max=16",
        "data.validation_size=50", "data.test_holdout_size=60",
    )  # fmt: skip
    manifest = run_preprocess(data, tmp_path / "images")
    assert manifest["class_names"] == ["0", "1", "2", "3"]
    assert manifest["image_shape"] == [8, 8, 1] and manifest["pixel_max"] == 16.0
    assert manifest["class_counts"]["test"] == [15, 15, 15, 15]
    x, _ = stored(tmp_path / "images", "train")
    assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1) and int(x.max()) == 16
    digest = hashlib.sha256((tmp_path / "digits.npz").read_bytes()).hexdigest()
    assert manifest["source"]["file_digests"] == {"digits.npz": digest}

    features = digits.data[keep].astype(np.float64)
    np.savez(tmp_path / "features.npz", x=features, y=digits.target[keep])
    data = data_config(
        "data=npz", f"data.path={tmp_path / 'features.npz'}", "data.pixel_max=1",
        "data.validation_size=50", "data.test_holdout_size=60", "data.class_names=[a,b,c,d]",
    )  # fmt: skip
    manifest = run_preprocess(data, tmp_path / "features")
    assert manifest["class_names"] == ["a", "b", "c", "d"] and manifest["image_shape"] == [64]
    x, _ = stored(tmp_path / "features", "train")
    assert x.dtype == np.float32 and float(x.max()) == 16.0  # used as they are
    assert dataset_classes(tmp_path / "features", data).num_classes == 4


# --- bad input: one line naming the file or key, nothing written or deleted ---------


def assert_refused(data: DataConfig, output: Path, pattern: str) -> str:
    """preprocess refuses with one line matching ``pattern``; ``output`` is untouched."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "kept.txt").write_text("the user's earlier output")
    with pytest.raises(DataError, match=pattern) as raised:
        run_preprocess(data, output)
    message = str(raised.value)
    assert "\n" not in message
    assert sorted(path.name for path in output.iterdir()) == ["kept.txt"]
    return message


def test_bad_image_folders_are_refused_naming_the_folder_or_file(tmp_path):
    out = tmp_path / "processed"
    assert_refused(folder_config(tmp_path / "nowhere"), out, r"nowhere: data.path is not a folder")
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    assert_refused(folder_config(tmp_path / "flat"), out, r"flat: no class subfolders")

    root = write_folder(tmp_path / "images")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    assert_refused(folder_config(root), out, r"images/empty: no images .* in this class folder")
    (root / "empty").rename(tmp_path / "moved")

    # Mixed grayscale and RGB images, with no color_mode to convert them.
    assert_refused(
        folder_config(root),
        out,
        r"images/one/01.png: L \(1 channel\), but .*images/one/00.png is RGB \(3 channels\); "
        r"set data.color_mode",
    )
    assert_refused(
        folder_config(root, "data.color_mode=rgb", "data.image_shape=[16,16,1]"),
        out,
        r"data.image_shape=\[16, 16, 1\], but .* shape \[16, 16, 3\]",
    )
    (root / "three" / "05.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a PNG")
    assert_refused(
        folder_config(root, "data.color_mode=rgb"),
        out,
        r"images/three/05.png: not a readable image .*; replace or remove the file",
    )
    (root / "three" / "05.png").unlink()
    digit_images(2, 1)[0].resize((10, 10)).save(root / "three" / "05.png")
    assert_refused(
        folder_config(root, "data.color_mode=rgb"),
        out,
        r"images/three/05.png: 10x10 pixels, but .* is 16x16; set data.image_size",
    )
    assert_refused(
        folder_config(
            root, "data.color_mode=rgb", "data.image_size=[16,16]", "data.class_names=[a,b,c]"
        ),
        out,
        r"data.class_names=\['a', 'b', 'c'\] does not match the classes \['one', 'three', 'zero'\]",
    )


def test_bad_tables_are_refused_naming_the_file_column_and_row(tmp_path):
    out = tmp_path / "processed"
    frame = write_wine(tmp_path / "wine.csv")
    config = csv_config(tmp_path / "wine.csv", "data.label_column=kind")
    assert_refused(config, out, r"wine.csv: no column data.label_column='kind' \(the columns are")

    text = frame.assign(colour=["red", "white"] * 89)
    text.to_csv(tmp_path / "text.csv", index=False)
    assert_refused(
        csv_config(tmp_path / "text.csv"),
        out,
        r"text.csv: feature column 'colour' is not numeric \('red' in row 1\); categorical "
        r"features are refused: one-hot encode",
    )
    holes = frame.copy()
    holes.loc[4, "magnesium"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    assert_refused(
        csv_config(tmp_path / "holes.csv"),
        out,
        r"holes.csv: column 'magnesium' has a missing value in row 5 \(line 6 of the file",
    )
    frame.assign(cultivar="cultivar_0").to_csv(tmp_path / "one.csv", index=False)
    assert_refused(
        csv_config(tmp_path / "one.csv"),
        out,
        r"one.csv: label column 'cultivar' holds a single class",
    )
    assert_refused(csv_config(tmp_path / "absent.csv"), out, r"absent.csv: no such file")


def test_bad_arrays_are_refused_naming_the_file(tmp_path):
    out = tmp_path / "processed"
    x = np.zeros((20, 4, 4), np.uint8)
    y = np.arange(20) % 2

    def npz(name: str, **arrays: np.ndarray) -> DataConfig:
        np.savez(tmp_path / name, **arrays)
        return data_config(
            "data=npz", f"data.path={tmp_path / name}", "data.validation_size=4",
            "data.test_holdout_size=4", *extra,
        )  # fmt: skip

    extra: tuple[str, ...] = ()
    assert_refused(
        npz("nox.npz", images=x, y=y), out, r"nox.npz: no array 'x' \(it holds \['images', 'y'\]\)"
    )
    assert_refused(npz("noy.npz", x=x), out, r"noy.npz: no array 'y'")
    assert_refused(npz("short.npz", x=x, y=y[:15]), out, r"short.npz: x has 20 rows but y has 15")
    assert_refused(
        npz("float.npz", x=x.astype(np.float32), y=y),
        out,
        r"float.npz: x is float32 of shape \(20, 4, 4\)",
    )
    assert_refused(
        npz("single.npz", x=x, y=np.zeros(20, int)), out, r"single.npz: y holds a single class"
    )
    assert_refused(
        npz("negative.npz", x=x, y=y - 1),
        out,
        r"negative.npz: label -1 \(y\[0\]\) is out of range 0..0",
    )
    extra = ("data.num_classes=2",)
    assert_refused(
        npz("range.npz", x=x, y=y * 3), out, r"range.npz: label 3 \(y\[1\]\) is out of range 0..1"
    )
    extra = ()
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    broken = data_config("data=npz", f"data.path={tmp_path / 'broken.npz'}")
    assert_refused(broken, out, r"broken.npz: not a readable .npz file")
    features = data_config(
        "data=npz",
        f"data.path={tmp_path / 'f.npz'}",
        "data.validation_size=4",
        "data.test_holdout_size=4",
    )
    np.savez(tmp_path / "f.npz", x=np.ones((20, 3)), y=y)
    assert_refused(
        features,
        out,
        r"data.pixel_max=255: .*f.npz holds features, which are not scaled; set data.pixel_max=1",
    )


IMAGES_AT_X = ["data=image_folder", "data.path=x"]
CSV_AT_T = ["data=csv", "data.path=t.csv"]
NPZ_AT_A = ["data=npz", "data.path=a.npz"]
CONFIG_MISTAKES = [
    (["data=image_folder"], r"^data.path: required, and not set"),
    (CSV_AT_T, r"^data: label_column: required for format=csv"),
    ([*NPZ_AT_A, "data.color_mode=rgb"], r"color_mode='rgb': only for format=image_folder"),
    ([*NPZ_AT_A, "data.image_size=[4,4]"], r"image_size=\[4, 4\]: only for format=image_folder"),
    (
        [*IMAGES_AT_X, "data.color_mode=sepia"],
        r"data.color_mode='sepia': must be one of \['grayscale', 'rgb'\]",
    ),
    ([*IMAGES_AT_X, "data.image_size=[16]"], r"image_size=\[16\]: give \[height, width\]"),
    (
        [*IMAGES_AT_X, "data.class_names=[a,b]", "data.num_classes=3"],
        r"class_names has 2 names but num_classes=3",
    ),
    (
        [*CSV_AT_T, "data.label_column=y", "data.pixel_max=255"],
        r"pixel_max=255: a table's features are standardized",
    ),
    (["data.path=elsewhere"], r"path='elsewhere': format=idx is read from the download stage's"),
    (["data.color_mode=rgb"], r"color_mode='rgb': only for the user's formats"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_MISTAKES)
def test_config_mistakes_are_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        compose_config(overrides)
    assert "\n" not in str(raised.value)


def test_the_check_stage_refuses_an_image_folder_without_a_path(tmp_path):
    """`reglab check` on a params.yaml composed with data=image_folder and no data.path."""
    from reglab.config.compose import compose, to_yaml

    (tmp_path / "params.yaml").write_text(to_yaml(compose(["data=image_folder"])))
    shown = subprocess.run(
        [sys.executable, "-m", "reglab", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert shown.returncode != 0
    assert "data.path: required, and not set" in shown.stderr


def test_the_download_stage_output_for_local_data_names_no_path(tmp_path):
    from reglab.data.userdata import note_local_source

    root = write_folder(tmp_path / "images", count=1)
    note = note_local_source(tmp_path / "raw", "image_folder", root)
    other = note_local_source(tmp_path / "raw2", "image_folder", tmp_path)
    assert note.read_text() == other.read_text()
    assert "nothing is downloaded" in note.read_text()
    with pytest.raises(DataError, match=r"nowhere \(data.path\): no such file or folder"):
        note_local_source(tmp_path / "raw3", "image_folder", tmp_path / "nowhere")
    assert json.loads(json.dumps({"ok": True}))


# --- DVC: one source file changed re-runs preprocess and what follows, nothing else -


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_dvc_reruns_preprocess_and_what_follows_when_one_image_changes(tmp_path):
    from tests.conftest import PROJECT_ROOT
    from tests.project_copy import clean_environment, copy_project, run

    # Outside the project, as a user's folder would be: DVC tracks it as an external dep.
    images = write_folder(tmp_path / "images")
    conf = PROJECT_ROOT / "conf"
    extra = {
        "conf/variants/mine.yaml": "# @package variants\ndefaults:\n"
        "  - /regularizer@baseline: none\n",
        "conf/experiment/mine.yaml": "# @package _global_\ndefaults:\n  - tiny\n"
        "  - override /data: image_folder\n  - override /variants: mine\n"
        f"data:\n  path: {images}\n  color_mode: grayscale\n  validation_size: 6\n"
        "  test_holdout_size: 9\n  train_size: null\n  test_size: null\n",
        "conf/config.yaml": (conf / "config.yaml")
        .read_text()
        .replace("  - experiment: null", "  - experiment: mine"),
    }
    root = copy_project(tmp_path / "project", files=extra)
    env = clean_environment()
    first = run(["dvc", "repro"], root, env)
    assert {"check", "download", "preprocess", "train@baseline-42"} <= stages_run(first.stdout)
    manifest = json.loads((root / "data/processed/manifest.json").read_text())
    assert manifest["class_names"] == ["one", "three", "zero"]
    report = json.loads((root / "reports/eval/baseline@42.json").read_text())
    assert report["class_names"] == ["one", "three", "zero"]

    unchanged = run(["dvc", "repro"], root, env)
    assert stages_run(unchanged.stdout) == set()

    digit_images(1, count=1, offset=40)[0].save(images / "one" / "03.png")
    edited = run(["dvc", "repro"], root, env)
    ran = stages_run(edited.stdout)
    assert {"preprocess", "train@baseline-42"} <= ran and not {"check", "download"} & ran
    changed = json.loads((root / "data/processed/manifest.json").read_text())
    digest = hashlib.sha256((images / "one/03.png").read_bytes()).hexdigest()
    assert changed["source"]["file_digests"]["one/03.png"] == digest

    # Adding or removing a file is seen by DVC as well (status only: no retraining).
    digit_images(2, count=1, offset=40)[0].save(images / "zero" / "99.png")
    status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    assert set(status) == {"preprocess"}
    (images / "zero" / "99.png").unlink()
    (images / "three" / "00.png").unlink()
    status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    assert set(status) == {"preprocess"}
