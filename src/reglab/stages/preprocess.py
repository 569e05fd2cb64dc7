"""Stage `preprocess`: train / val / test arrays and a manifest in paths.processed."""

from __future__ import annotations

from pathlib import Path

from reglab.data.prepare import preprocess, split_plan
from reglab.stages import read_config, run_stage


def main(argv: list[str]) -> None:
    config = read_config()
    data = config.data
    preprocess(
        # The download's folder (paths.raw) for the bundled sets, else the user's data.
        Path(data.path),
        Path(config.paths.processed),
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


if __name__ == "__main__":
    run_stage(main)
