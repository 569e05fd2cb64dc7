"""The data group's own checks: one clear error naming the key, before any work starts."""

from __future__ import annotations

import pytest

from reglab.config.checks import ConfigError
from reglab.config.compose import compose
from reglab.config.schema import validate


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data=digits", "data.test_holdout_size=null"],
            "data: test_holdout_size: required when files has no official test split",
        ),
        (
            ["+data.test_holdout_size=100"],
            "data: test_holdout_size=100: this data set has an official test split; remove "
            "test_holdout_size (use test_size for a subset)",
        ),
        (
            ["data.files.train_labels.sha256=abc"],
            "data: files.train_labels.sha256='abc': must be 64 lowercase hex digits",
        ),
        (
            ["data.class_names=[a,b]"],
            "data: class_names has 2 names but num_classes=10; give one name per class",
        ),
        (
            ["data.class_names=[]"],
            "data: class_names=[]: give one name per class (num_classes=10)",
        ),
        (["data.image_shape=[28,28]"], "data: image_shape=[28, 28]: give [height, width, chan"),
        (["data.pixel_max=0"], "data.pixel_max=0.0: must be > 0"),
        (["~data.files.test_labels"], "data: files: has test_images alone; give both of"),
    ],
)
def test_inconsistent_data_config_is_one_clear_error(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as caught:
        validate(compose(overrides))
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "digits"])
def test_every_data_set_composes_and_validates(name: str):
    data = validate(compose([f"data={name}"])).data
    assert data.name == name
    assert len(data.class_names) == data.num_classes == 10
    assert all(len(entry.sha256) == 64 for entry in data.files.values())
