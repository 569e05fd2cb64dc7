"""The user's image folder: one subfolder per class, optionally under train/ and test/.

The layout is that of ``keras.utils.image_dataset_from_directory``. Images are
decoded with Pillow rather than Keras's utilities: ``keras.utils.load_img`` is
a thin wrapper over Pillow anyway, and calling Pillow directly keeps TensorFlow
out of the preprocess stage (seconds of start-up), decodes from the bytes that
are hashed (each file is read once), and lets a corrupt file be named in the
error. Pixels come out as uint8 NHWC arrays.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from reglab.data.errors import DataError
from reglab.data.userdata import IMAGES, UserData, check_class_names

log = logging.getLogger(__name__)

# The extensions image_dataset_from_directory reads, and Pillow's other common ones.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
OFFICIAL_SPLIT = ("train", "test")
_PILLOW_MODES = {"grayscale": "L", "rgb": "RGB"}
_SINGLE_BAND = ("1", "I", "I;16", "I;16B", "I;16L", "F")


def _subfolders(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    )


def layout(root: Path) -> dict[str, dict[str, list[str]]]:
    """{"train": {class: [relative image paths]}[, "test": ...]}, sorted; checked.

    ``root`` holds the class folders, or train/ and test/ folders that each do.
    """
    if not root.is_dir():
        raise DataError(
            f"{root}: data.path is not a folder; give a folder with one subfolder per class"
        )
    top = _subfolders(root)
    if all(name in top for name in OFFICIAL_SPLIT):
        others = [name for name in top if name not in OFFICIAL_SPLIT]
        if others:
            raise DataError(
                f"{root}: has train/ and test/ (an official split) and also {others}; "
                "move those class folders into train/ and test/, or remove them"
            )
        roots = {split: root / split for split in OFFICIAL_SPLIT}
    else:
        roots = {"train": root}
    found: dict[str, dict[str, list[str]]] = {}
    for split, folder in roots.items():
        classes = _subfolders(folder)
        if not classes:
            raise DataError(
                f"{folder}: no class subfolders; put each class's images in a folder "
                "named after the class (<data.path>/<class>/<image>.png)"
            )
        found[split] = {}
        for name in classes:
            images = sorted(
                path.relative_to(root).as_posix()
                for path in (folder / name).rglob("*")
                if path.suffix.lower() in IMAGE_EXTENSIONS
                and path.is_file()
                and not path.name.startswith(".")
            )
            if not images:
                raise DataError(
                    f"{folder / name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this "
                    "class folder; add images or remove the folder"
                )
            found[split][name] = images
    if "test" in found:
        unknown = sorted(set(found["test"]) - set(found["train"]))
        if unknown:
            raise DataError(
                f"{root / 'test'}: classes {unknown} have no folder in {root / 'train'}; "
                "every test class needs training images"
            )
    return found


def source_files(root: Path) -> list[str]:
    """Every image file preprocess reads, relative to ``root``, sorted."""
    return sorted(
        name for classes in layout(root).values() for names in classes.values() for name in names
    )


def read_image_folder(
    root: Path,
    *,
    image_size: Sequence[int] | None,
    color_mode: str | None,
    class_names: Sequence[str] = (),
) -> UserData:
    """Decode every image of ``root`` (resized to ``image_size`` [height, width] and
    converted to ``color_mode`` when given) into uint8 NHWC arrays with int64 labels."""
    found = layout(root)
    names = check_class_names(list(found["train"]), class_names, f"the class folders of {root}")
    index = {name: label for label, name in enumerate(names)}
    reader = _Decoder(root, image_size, color_mode)
    splits = {}
    for split, classes in found.items():
        files = [(name, label) for label in sorted(classes) for name in classes[label]]
        images = None
        for position, (name, _) in enumerate(files):
            pixels = reader.decode(name)
            if images is None:
                images = np.empty((len(files), *pixels.shape), dtype=np.uint8)
            images[position] = pixels
        labels = np.array([index[label] for _, label in files], dtype=np.int64)
        splits[split] = (images, labels)
    log.info(
        "%s: %d images in %d classes, %s",
        root,
        len(reader.digests),
        len(names),
        "x".join(str(side) for side in reader.shape or ()),
    )
    return UserData(splits, names, dict(sorted(reader.digests.items())), IMAGES)


class _Decoder:
    """Decodes one image after another; every image must come out the same shape."""

    def __init__(self, root: Path, image_size: Sequence[int] | None, color_mode: str | None):
        self.root = root
        self.size = None if image_size is None else (int(image_size[1]), int(image_size[0]))
        self.mode = None if color_mode is None else _PILLOW_MODES[color_mode]
        self.digests: dict[str, str] = {}
        self.shape: tuple[int, ...] | None = None
        self.first: str | None = None
        self.first_mode: str | None = None

    def decode(self, name: str) -> np.ndarray:
        path = self.root / name
        content = path.read_bytes()
        self.digests[name] = hashlib.sha256(content).hexdigest()
        try:
            with Image.open(io.BytesIO(content)) as image:
                image.load()
                mode = self.mode or _native_mode(image)
                converted = image.convert(mode) if image.mode != mode else image
                if self.size is not None and converted.size != self.size:
                    converted = converted.resize(self.size, Image.Resampling.BILINEAR)
                pixels = np.asarray(converted, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(
                f"{path}: not a readable image ({error}); replace or remove the file"
            ) from None
        if pixels.ndim == 2:
            pixels = pixels[..., np.newaxis]
        if self.shape is None:
            self.shape, self.first, self.first_mode = pixels.shape, name, mode
        elif pixels.shape != self.shape:
            self._refuse(path, pixels.shape, mode)
        return pixels

    def _refuse(self, path: Path, shape: tuple[int, ...], mode: str) -> None:
        first = self.root / str(self.first)
        assert self.shape is not None
        if shape[2] != self.shape[2]:
            raise DataError(
                f"{path}: {mode} ({_channels(shape[2])}), but {first} is {self.first_mode} "
                f"({_channels(self.shape[2])}); set data.color_mode=grayscale or rgb to "
                "convert every image"
            )
        raise DataError(
            f"{path}: {shape[0]}x{shape[1]} pixels, but {first} is {self.shape[0]}x"
            f"{self.shape[1]}; set data.image_size=[height, width] to resize every image"
        )


def _native_mode(image: Image.Image) -> str:
    """The mode an image keeps when no color_mode is given: its own channels, as uint8."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image.mode
    if image.mode in _SINGLE_BAND:
        return "L"
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return "RGBA" if has_alpha else "RGB"


def _channels(count: int) -> str:
    return f"{count} channel" + ("" if count == 1 else "s")
