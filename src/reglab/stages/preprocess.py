"""Stage `preprocess`: train / val / test arrays and a manifest in paths.processed."""

from __future__ import annotations

from pathlib import Path

from reglab.compose import load_params
from reglab.data.prepare import SplitPlan, preprocess
from reglab.stages import run_stage


def main(argv: list[str]) -> None:
    config = load_params()
    data = config.data
    plan = SplitPlan(
        split_seed=data.split_seed,
        validation_size=data.validation_size,
        train_size=data.train_size,
        test_size=data.test_size,
        test_holdout_size=data.test_holdout_size,
        test_holdout_seed=data.test_holdout_seed,
    )
    preprocess(
        Path(config.paths.raw),
        Path(config.paths.processed),
        name=data.name,
        data_format=data.format,
        files=data.files,
        image_shape=data.image_shape,
        num_classes=data.num_classes,
        class_names=data.class_names,
        pixel_max=data.pixel_max,
        plan=plan,
    )


if __name__ == "__main__":
    run_stage(main)
