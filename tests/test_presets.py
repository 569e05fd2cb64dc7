"""conf/: every preset and variant set composes and validates; every key can be overridden;
every bad value is one ConfigError naming the key and the value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from reglab.config.checks import ConfigError
from reglab.config.compose import CONF_DIR, compose
from reglab.config.schema import validate
from reglab.model.regularizers import RegularizerConfig

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
VARIANT_SETS = sorted(path.stem for path in (CONF_DIR / "variants").glob("*.yaml"))
RECIPES = sorted(path.stem for path in (CONF_DIR / "regularizer").glob("*.yaml"))


def schema_keys(node: object, prefix: str = "") -> set[str]:
    """Every dotted leaf key of a dataclass tree."""
    keys: set[str] = set()
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            keys |= schema_keys(value, f"{key}.")
        else:
            keys.add(key)
    return keys


def composed_keys(node: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in node.items():
        key = f"{prefix}{name}"
        # An empty mapping (custom.arguments: {}) is a leaf, as in the schema.
        nested = isinstance(value, dict) and value
        keys |= composed_keys(value, f"{key}.") if nested else {key}
    return keys


RECIPE_KEYS = schema_keys(RegularizerConfig())


def test_the_catalogue_has_one_file_per_technique():
    techniques = {
        "none", "l1", "l2", "l1_l2", "dropout", "orthogonal", "group_lasso", "spatial_dropout",
        "gaussian_noise", "max_norm", "max_norm_dropout", "early_stopping", "weight_decay",
        "label_smoothing", "augmentation",
    }  # fmt: skip
    assert techniques <= set(RECIPES)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes_and_validates(experiment):
    config = validate(compose([f"experiment={experiment}"]))
    assert config.variants


def test_experiment_presets_choose_their_variant_sets():
    assert len(validate(compose(["experiment=all"])).variants) == 18
    sweep = validate(compose(["experiment=strength_sweep"])).variants
    assert {name: recipe.kernel.l2 for name, recipe in sweep.items() if name.startswith("l2_")} == {
        "l2_1e-5": 1e-5, "l2_1e-4": 1e-4, "l2_1e-3": 1e-3, "l2_1e-2": 1e-2, "l2_1e-1": 1e-1,
    }  # fmt: skip
    rates = {
        name: (recipe.dropout.conv_rate, recipe.dropout.dense_rate)
        for name, recipe in sweep.items()
        if name.startswith("dropout_")
    }
    assert rates == {f"dropout_{r}0": (r / 10, r / 10) for r in (1, 3, 5, 7)}
    assert sweep["baseline"] == RegularizerConfig()


@pytest.mark.parametrize("variant_set", VARIANT_SETS)
def test_every_variant_holds_every_recipe_key(variant_set):
    """Each variant starts from `none`, so `-S variants.<name>.<key>=...` finds every key."""
    cfg = compose([f"variants={variant_set}"])
    validate(cfg)
    for name, recipe in OmegaConf.to_container(cfg.variants).items():
        assert composed_keys(recipe) == RECIPE_KEYS, name


def test_default_variants_keep_their_names_and_techniques():
    variants = validate(compose([])).variants
    assert list(variants) == ["baseline", "l1", "l2", "l1_l2", "dropout"]
    assert variants["baseline"] == RegularizerConfig()
    assert variants["l1"].kernel.l1 > 0 and variants["l1"].kernel.l2 == 0
    assert variants["l2"].kernel.l2 > 0 and variants["l2"].kernel.l1 == 0
    assert variants["l1_l2"].kernel.l1 > 0 and variants["l1_l2"].kernel.l2 > 0
    assert variants["dropout"].dropout.conv_rate > 0 and variants["dropout"].dropout.dense_rate > 0
    # Each changes only its own technique.
    for name in ("l1", "l2", "l1_l2"):
        assert dataclasses.replace(variants[name], kernel=RegularizerConfig().kernel) == (
            RegularizerConfig()
        )


def test_recipes_that_combine_two_others_keep_both():
    variants = validate(compose(["experiment=all"])).variants
    combined = variants["max_norm_dropout"]
    assert combined.max_norm.max_value == 3.0  # its own, looser bound
    assert combined.dropout == variants["dropout"].dropout
    l2_dropout = variants["l2_dropout"]
    assert l2_dropout.kernel == variants["l2"].kernel
    assert l2_dropout.dropout == variants["dropout"].dropout


def test_a_variant_combined_on_the_command_line():
    cfg = compose(["+regularizer@variants.mine=[none,l2,augmentation]"])
    mine = validate(cfg).variants["mine"]
    assert mine.kernel.l2 == 1e-3 and mine.augmentation.flip == "horizontal"
    assert composed_keys(OmegaConf.to_container(cfg.variants.mine)) == RECIPE_KEYS


def test_every_recipe_key_can_be_overridden_without_a_plus():
    """Hydra's struct mode rejects overriding a missing key: all of them must be there."""
    values = {
        "kernel.l1": 0.5, "kernel.l2": 0.5, "kernel.conv.l1": 0.5, "kernel.conv.l2": 0.5,
        "kernel.dense.l1": 0.5, "kernel.dense.l2": 0.5,
        "bias.l1": 0.5, "bias.l2": 0.5, "bias.conv.l1": 0.5, "bias.conv.l2": 0.5,
        "bias.dense.l1": 0.5, "bias.dense.l2": 0.5,
        "activity.l1": 0.5, "activity.l2": 0.5, "activity.conv.l1": 0.5, "activity.conv.l2": 0.5,
        "activity.dense.l1": 0.5, "activity.dense.l2": 0.5,
        "orthogonal.factor": 0.5, "orthogonal.mode": "rows",
        "group_lasso.conv": 0.5, "group_lasso.dense": 0.5,
        "dropout.conv_rate": 0.5, "dropout.dense_rate": 0.5, "spatial_dropout.rate": 0.0,
        "gaussian_noise.stddev": 0.5, "max_norm.max_value": 0.5,
        "augmentation.flip": "vertical", "augmentation.translation": 0.5,
        "augmentation.rotation": 0.5, "augmentation.zoom": 0.5,
        "early_stopping.enabled": True, "early_stopping.monitor": "val_accuracy",
        "early_stopping.patience": 5, "early_stopping.min_delta": 0.5,
        "early_stopping.restore_best_weights": False,
        "weight_decay": 0.5, "label_smoothing": 0.5,
        "layers.types": ["dense"], "layers.include": "dense_.*", "layers.exclude": "dense_9",
        "layers.output": True,
        "custom.name": "examples.models.CenteredL2",
        "custom.arguments": {}, "custom.on": "bias",
    }  # fmt: skip
    assert set(values) == RECIPE_KEYS

    def override(value: object) -> str:
        if isinstance(value, dict):
            return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ",".join(map(str, value)) + "]"
        return str(value)

    overrides = [f"variants.l2.{key}={override(value)}" for key, value in values.items()]
    recipe = OmegaConf.to_container(validate(compose(overrides)) and compose(overrides))
    for key, value in values.items():
        node = recipe["variants"]["l2"]
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_a_users_arguments_are_added_with_a_plus():
    """A builder's kwargs and a regularizer's arguments are the user's own keys: Hydra
    adds a key that the schema does not have with ``+``."""
    config = validate(
        compose(
            [
                "model=keras",
                "model.builder=examples.models.dense",
                "+model.kwargs.width=64",
                "variants.l2.custom.name=examples.models.CenteredL2",
                "+variants.l2.custom.arguments.strength=0.5",
            ]
        )
    )
    assert config.model.kwargs == {"width": 64}
    assert config.model.builder_arguments() == {"width": 64}
    assert config.variants["l2"].custom.arguments == {"strength": 0.5}


def test_the_issue_s_command_line_examples():
    variants = validate(
        compose(["variants.l2.kernel.l2=0.01", "variants.dropout.dropout.dense_rate=0.3"])
    ).variants
    assert variants["l2"].kernel.l2 == 0.01
    assert variants["dropout"].dropout.dense_rate == 0.3


@pytest.mark.slow
def test_dvc_composes_the_presets_the_same_way(tmp_path: Path):
    """DVC writes params.yaml with hydra.compose + OmegaConf.resolve + OmegaConf.to_yaml."""
    from dvc.utils.hydra import compose_and_dump

    for experiment in ("all", "strength_sweep"):
        output = tmp_path / f"{experiment}.yaml"
        compose_and_dump(
            output, str(CONF_DIR), None, "config", str(tmp_path), [f"experiment={experiment}"]
        )
        written = yaml.safe_load(output.read_text())
        assert (
            validate(written).variants == validate(compose([f"experiment={experiment}"])).variants
        )


BAD_CASES = [
    # (overrides, text the error must contain)
    (["+variants.l2.kernel.l3=0.1"], "variants.l2.kernel.l3"),
    (["+variants.l2.dropconnect=0.1"], "variants.l2.dropconnect"),
    (["variants.l2.augmentation.flip=diagonal"], "variants.l2.augmentation.flip='diagonal'"),
    (["variants.l2.orthogonal.mode=diagonal"], "variants.l2.orthogonal.mode='diagonal'"),
    (
        ["variants.l2.early_stopping.monitor=val_los"],
        "variants.l2.early_stopping.monitor='val_los'",
    ),
    (["variants.l2.kernel.l2=-0.1"], "variants.l2.kernel.l2=-0.1: must be >= 0"),
    (["variants.l2.kernel.dense.l1=-1"], "variants.l2.kernel.dense.l1=-1.0: must be >= 0"),
    (["variants.l2.group_lasso.conv=-0.001"], "variants.l2.group_lasso.conv=-0.001: must be >= 0"),
    (["variants.l2.weight_decay=-0.5"], "variants.l2.weight_decay=-0.5: must be >= 0"),
    (["variants.l2.gaussian_noise.stddev=-0.1"], "variants.l2.gaussian_noise.stddev=-0.1"),
    (["variants.l2.max_norm.max_value=0"], "variants.l2.max_norm.max_value=0.0: must be > 0"),
    (
        ["variants.dropout.dropout.dense_rate=1.0"],
        "variants.dropout.dropout.dense_rate=1.0: must be < 1",
    ),
    (
        ["variants.dropout.dropout.conv_rate=-0.2"],
        "variants.dropout.dropout.conv_rate=-0.2: must be >= 0",
    ),
    (["variants.l2.spatial_dropout.rate=1.5"], "variants.l2.spatial_dropout.rate=1.5: must be < 1"),
    (
        ["variants.l2.augmentation.translation=1"],
        "variants.l2.augmentation.translation=1.0: must be < 1",
    ),
    (["variants.l2.label_smoothing=1.0"], "variants.l2.label_smoothing=1.0: must be < 1"),
    (
        ["variants.l2.early_stopping.patience=0"],
        "variants.l2.early_stopping.patience=0: must be >= 1",
    ),
    (["variants.l2.early_stopping.min_delta=-0.01"], "variants.l2.early_stopping.min_delta=-0.01"),
    (["variants.l2.kernel.l2=strong"], "variants.l2.kernel.l2"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CASES, ids=[c[0][0] for c in BAD_CASES])
def test_each_bad_value_is_one_error_naming_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose(overrides))
    text = str(error.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["regularizer@variants.l2=[none,l3]"], "regularizer/l3"),
        (["variants=everything"], "variants/everything"),
        (["experiment=huge"], "experiment/huge"),
        (["model=resnet"], "model/resnet"),
    ],
)
def test_an_unknown_group_option_names_it(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_a_bad_config_writes_nothing(tmp_path: Path, capsys):
    from reglab.cli import main

    output = tmp_path / "params.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["compose", "--output", str(output), "variants.l2.early_stopping.patience=0"])
    assert exit_info.value.code == 2
    assert "variants.l2.early_stopping.patience=0: must be >= 1" in capsys.readouterr().err
    assert not output.exists()
