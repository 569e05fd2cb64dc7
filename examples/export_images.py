"""Write a bundled data set out as an image folder: one PNG per image, one folder per class.

The layout reglab's ``data=image_folder`` (and ``keras.utils.image_dataset_from_directory``)
reads, with the official split as ``train/`` and ``test/``::

    python -m examples.export_images digits data/images/digits
    python -m examples.export_images fashion_mnist data/images/fashion --per-class 300
    dvc exp run -S data=image_folder -S data.path=data/images/digits

Offline: scikit-learn's bundled digits, or Fashion-MNIST from Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or any folder of
its IDX files.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array: the format's header is its shape."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    dimensions = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def digits() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 -> 0..255, so the PNGs look like images.
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    return {"": (images, bunch.target, tuple(str(name) for name in bunch.target_names))}


def fashion_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        images = read_idx(next(folder.glob(f"{prefix}-images-idx3-ubyte*")))
        labels = read_idx(next(folder.glob(f"{prefix}-labels-idx1-ubyte*")))
        return images, labels, FASHION_CLASSES

    return {"train": pair("train"), "test": pair("t10k")}


def export(
    splits: dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...]]],
    destination: Path,
    per_class: int | None,
) -> int:
    """Write the PNGs; returns how many."""
    written = 0
    for split, (images, labels, names) in splits.items():
        for label, name in enumerate(names):
            folder = destination / split / name
            folder.mkdir(parents=True, exist_ok=True)
            chosen = np.flatnonzero(labels == label)[:per_class]
            for index in chosen:
                Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
            written += len(chosen)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["digits", "fashion_mnist"])
    parser.add_argument("destination", type=Path)
    parser.add_argument("--per-class", type=int, default=None, help="at most this many per class")
    parser.add_argument(
        "--fashion-mnist",
        type=Path,
        default=Path("/usr/share/datasets/fashion-mnist"),
        help="the folder of Fashion-MNIST's IDX files",
    )
    args = parser.parse_args()
    splits = digits() if args.dataset == "digits" else fashion_mnist(args.fashion_mnist)
    count = export(splits, args.destination, args.per_class)
    print(f"wrote {count} PNG files into {args.destination}")


if __name__ == "__main__":
    main()
