"""Models: architecture and layer names, seeding, every technique in place, save and load."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from reglab.config.checks import ConfigError
from reglab.config.compose import compose
from reglab.config.schema import validate
from reglab.model.build import ModelConfig, build_model, describe_model
from reglab.model.regularizers import RegularizerConfig
from reglab.train.fit import penalty
from tests.conftest import PROJECT_ROOT, digits_splits, fit_digits

FASHION_SHAPE = (28, 28, 1)
# Read from the file so a variant added to the `all` set is tested without editing this.
CATALOGUE = [
    line.split("@", 1)[1].split(":", 1)[0]
    for line in (PROJECT_ROOT / "conf/variants/all.yaml").read_text().splitlines()
    if line.strip().startswith("- /regularizer@")
]
DIGITS_MODEL = ModelConfig(padding="same")  # the default CNN, sized for 8x8 inputs


def layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers]


def every_technique() -> RegularizerConfig:
    """One recipe that switches on everything build_model knows about."""
    recipe = RegularizerConfig()
    recipe.kernel.l1 = 1e-5
    recipe.kernel.l2 = 1e-3
    recipe.bias.l2 = 1e-4
    recipe.activity.dense.l1 = 1e-5
    recipe.orthogonal.factor = 0.1
    recipe.group_lasso.conv = 1e-4
    recipe.dropout.dense_rate = 0.5
    recipe.spatial_dropout.rate = 0.2
    recipe.gaussian_noise.stddev = 0.1
    recipe.max_norm.max_value = 3.0
    recipe.augmentation.flip = "horizontal"
    recipe.augmentation.translation = 0.1
    recipe.augmentation.rotation = 0.05
    recipe.augmentation.zoom = 0.1
    return recipe


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return digits_splits()["val"][0][:64]


def test_default_cnn_has_the_documented_layers_and_returns_logits():
    model = build_model(ModelConfig(), RegularizerConfig(), FASHION_SHAPE, 10, seed=0)
    assert layer_names(model) == [
        "images",
        "conv_1",
        "pool_1",
        "conv_2",
        "pool_2",
        "flatten",
        "dense_1",
        "logits",
    ]
    assert tuple(model.output.shape) == (None, 10)
    assert model.get_layer("conv_1").filters == 32
    assert model.get_layer("conv_2").filters == 64
    assert model.get_layer("dense_1").units == 128
    # 320 + 18,496 + (5*5*64*128 + 128) + (128*10 + 10)
    assert model.count_params() == 225_034
    # Logits: no softmax on the last layer.
    assert model.get_layer("logits").activation is keras.activations.linear


@pytest.mark.parametrize(
    ("group_option", "expected_layers", "params"),
    [
        ("cnn", ["conv_1", "pool_1", "conv_2", "pool_2", "flatten", "dense_1", "logits"], 225_034),
        ("tutorial_cnn", ["conv_1", "pool_1", "conv_2", "pool_2", "flatten", "logits"], 34_826),
        ("mlp", ["flatten", "dense_1", "dense_2", "logits"], 669_706),
    ],
)
def test_each_model_option_in_conf_builds(group_option, expected_layers, params):
    config = validate(compose([f"model={group_option}"]))
    model = build_model(config.model, RegularizerConfig(), FASHION_SHAPE, 10, seed=0)
    assert layer_names(model)[1:] == expected_layers
    assert model.count_params() == params


def test_same_seed_same_initial_weights_and_different_seed_different():
    def initial(seed: int) -> list[np.ndarray]:
        model = build_model(ModelConfig(), RegularizerConfig(), FASHION_SHAPE, 10, seed=seed)
        return [weight.numpy() for weight in model.weights]

    first, again, other = initial(3), initial(3), initial(4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    # Each layer draws its own seed: same-shaped kernels do not start equal.
    mlp = build_model(
        ModelConfig(name="mlp", conv_filters=[], dense_units=[16, 16, 16]),
        RegularizerConfig(),
        (4, 4, 1),
        16,
        seed=0,
    )
    assert not np.allclose(mlp.get_layer("dense_2").kernel, mlp.get_layer("dense_3").kernel)


def test_dropout_sits_after_each_conv_block_and_before_the_classifier():
    recipe = RegularizerConfig()
    recipe.dropout.conv_rate = 0.25
    recipe.dropout.dense_rate = 0.5
    cnn = build_model(ModelConfig(), recipe, FASHION_SHAPE, 10, seed=0)
    assert layer_names(cnn)[1:] == [
        "conv_1",
        "pool_1",
        "dropout_conv_1",
        "conv_2",
        "pool_2",
        "dropout_conv_2",
        "flatten",
        "dense_1",
        "dropout_dense_1",
        "logits",
    ]
    assert cnn.get_layer("dropout_conv_1").rate == 0.25
    assert cnn.get_layer("dropout_dense_1").rate == 0.5
    tutorial = build_model(
        ModelConfig(name="tutorial_cnn", dense_units=[]), recipe, FASHION_SHAPE, 10, seed=0
    )
    assert layer_names(tutorial)[-3:] == ["flatten", "dropout_before_logits", "logits"]


def test_kernel_penalties_sit_on_every_conv_and_dense_kernel():
    recipe = RegularizerConfig()
    recipe.kernel.l2 = 1e-3
    model = build_model(ModelConfig(), recipe, FASHION_SHAPE, 10, seed=0)
    weighted = [layer for layer in model.layers if hasattr(layer, "kernel")]
    assert [layer.name for layer in weighted] == ["conv_1", "conv_2", "dense_1", "logits"]
    for layer in weighted:
        assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
        assert layer.kernel_regularizer.l2 == pytest.approx(1e-3)
    # The penalty Keras collects is the one the recipe asked for.
    expected = sum(1e-3 * np.square(layer.kernel.numpy()).sum() for layer in weighted)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_input_layers_act_only_in_training(images):
    recipe = RegularizerConfig()
    recipe.augmentation.flip = "horizontal"
    recipe.augmentation.translation = 0.2
    recipe.gaussian_noise.stddev = 0.3
    model = build_model(DIGITS_MODEL, recipe, images.shape[1:], 10, seed=0)
    plain = build_model(DIGITS_MODEL, RegularizerConfig(), images.shape[1:], 10, seed=0)
    assert layer_names(model)[:4] == [
        "images",
        "augment_flip",
        "augment_translation",
        "input_noise",
    ]
    inference = model(images, training=False).numpy()
    # Same seed, same initial weights: at inference only the random layers could differ.
    np.testing.assert_allclose(inference, plain(images, training=False).numpy(), rtol=1e-6)
    assert not np.allclose(model(images, training=True).numpy(), inference)


def test_describe_model_lists_each_layer_with_its_regularization():
    recipe = every_technique()
    recipe.kernel.l1 = 0.0
    model = build_model(ModelConfig(), recipe, FASHION_SHAPE, 10, seed=0)
    text = describe_model(model)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert set(layer_names(model)) <= set(rows)
    conv = rows["conv_1"]
    assert "(None, 26, 26, 32)" in conv and "320" in conv
    assert "L2(l2=0.001) + GroupLasso(strength=0.0001)" in conv
    assert "MaxNorm(max_value=3, axis=[0, 1, 2])" in conv
    dense = rows["dense_1"]
    assert "L2(l2=0.001) + OrthogonalRegularizer(factor=0.1, mode='columns')" in dense
    assert "L1(l1=1e-05)" in dense  # the activity penalty
    assert "204,928" in dense
    assert "rate=0.2" in rows["spatial_dropout_conv_1"]
    assert "stddev=0.1" in rows["input_noise"]
    assert text.rstrip().endswith("model cnn: 225,034 parameters (225,034 trainable)")


@pytest.mark.slow
def test_a_model_with_every_technique_saves_and_loads_back(tmp_path: Path, images):
    dense_only = every_technique()
    dense_only.group_lasso.conv = 0.0
    dense_only.spatial_dropout.rate = 0.0
    mlp = ModelConfig(name="mlp", conv_filters=[], dense_units=[32])
    for model_config, recipe in ((DIGITS_MODEL, every_technique()), (mlp, dense_only)):
        model = build_model(model_config, recipe, images.shape[1:], 10, seed=5)
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(images, np.arange(len(images)) % 10, epochs=1, batch_size=32, verbose=0)
        path = tmp_path / f"{model_config.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects
        np.testing.assert_array_equal(
            loaded.predict(images, verbose=0), model.predict(images, verbose=0)
        )
        assert describe_model(loaded) == describe_model(model)
        # Activity penalties come from the latest call: make it the same eager one.
        model(images, training=False)
        loaded(images, training=False)
        assert float(sum(loaded.losses)) == pytest.approx(float(sum(model.losses)), rel=1e-6)


def test_spatial_and_plain_dropout_after_conv_blocks_are_exclusive():
    with pytest.raises(ConfigError) as error:
        validate(
            compose(
                [
                    "variants.dropout.spatial_dropout.rate=0.2",
                    "variants.dropout.dropout.conv_rate=0.25",
                ]
            )
        )
    message = str(error.value)
    assert message.startswith("variants.dropout: ")
    assert "dropout.conv_rate=0.25" in message and "spatial_dropout.rate=0.2" in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=mlp", "model.conv_filters=[8]"], "model: conv_filters=[8]: the mlp has no conv"),
        (["model.conv_filters=[]"], "model: conv_filters=[]: model 'cnn' needs at least one"),
        (["model.dense_units=[0]"], "model: dense_units=[0]: every size must be >= 1"),
        (["model.activation=sigmoidal"], "model.activation='sigmoidal': must be one of"),
        (["model.padding=full"], "model.padding='full': must be one of ['valid', 'same']"),
    ],
)
def test_bad_model_config_names_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose(overrides))
    assert message in str(error.value)


def test_a_too_small_input_is_a_config_error_not_a_keras_traceback():
    with pytest.raises(ConfigError, match=r"pool_2 needs at least 2x2 pixels but gets 1x1"):
        build_model(ModelConfig(), RegularizerConfig(), (8, 8, 1), 10, seed=0)
    assert build_model(DIGITS_MODEL, RegularizerConfig(), (8, 8, 1), 10, seed=0)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("spatial_dropout.rate", 0.2), ("dropout.conv_rate", 0.3), ("group_lasso.conv", 1e-4)],
)
def test_a_conv_only_setting_on_the_mlp_is_refused_in_one_line(setting, value):
    recipe = RegularizerConfig()
    group, key = setting.split(".")
    setattr(getattr(recipe, group), key, value)
    mlp = ModelConfig(name="mlp", conv_filters=[], dense_units=[8])
    with pytest.raises(ConfigError) as error:
        build_model(mlp, recipe, (8, 8, 1), 10, seed=0)
    message = str(error.value)
    assert message.startswith(f"{setting}={value}: acts on conv layers, and model 'mlp' has none")
    assert "\n" not in message


@pytest.fixture(scope="module")
def catalogue() -> dict[str, RegularizerConfig]:
    return validate(compose(["experiment=all"])).variants


@pytest.mark.parametrize("variant", CATALOGUE)
def test_every_recipe_in_the_catalogue_trains_one_epoch(variant, catalogue):
    """Each variant of the `all` set builds and fits on tiny data with a finite loss."""
    recipe = catalogue[variant]
    x_train, y_train = digits_splits()["train"]
    x_train, y_train = x_train[:64], keras.utils.to_categorical(y_train[:64], 10)
    small = ModelConfig(conv_filters=[4, 8], padding="same", dense_units=[8])
    model = build_model(small, recipe, x_train.shape[1:], 10, seed=0)
    model.compile(
        keras.optimizers.AdamW(1e-3, weight_decay=recipe.weight_decay),
        keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=recipe.label_smoothing
        ),
        run_eagerly=True,  # one step: tracing a graph would cost more than running it
    )
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    loss = history.history["loss"][0]
    # Ten classes: a fresh model's cross-entropy is near ln(10) = 2.30; one epoch moves
    # every kernel, and the penalty is there exactly when the recipe asks for one.
    assert 0.5 < loss < 5.0
    after = model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert (penalty(model, x_train[:8]) > 0) == asks_for_a_penalty(recipe), variant


def asks_for_a_penalty(recipe: RegularizerConfig) -> bool:
    strengths = [
        strength
        for penalty_config in (recipe.kernel, recipe.bias, recipe.activity)
        for layer_type in ("conv", "dense")
        for strength in penalty_config.strengths(layer_type)
    ]
    others = (recipe.orthogonal.factor, recipe.group_lasso.conv, recipe.group_lasso.dense)
    return any(value > 0 for value in (*strengths, *others))


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_is_one_switch_and_keeps_float32_logits(mixed_bfloat16, tmp_path):
    from reglab.train.fit import compile_model, make_optimizer, seed_everything

    seed_everything(0)
    recipe = RegularizerConfig()
    recipe.kernel.l2 = 1e-3
    model = build_model(DIGITS_MODEL, recipe, (8, 8, 1), 10, seed=0)
    conv = model.get_layer("conv_1")
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
    assert model.get_layer("logits").compute_dtype == "float32"
    splits = digits_splits()
    compile_model(model, make_optimizer("adam", 1e-2))
    result = fit_digits(model, splits, seed=0, label="bf16", epochs=2)
    last = result.history[-1]
    assert last["train_penalty"] > 0
    assert last["train_total_loss"] == pytest.approx(
        last["train_data_loss"] + last["train_penalty"], rel=1e-6
    )
    assert 0 < last["val_data_loss"] < 2.3  # better than chance after two epochs
    assert last["val_accuracy"] > 0.5
    assert model.predict(splits["val"][0][:4], verbose=0).dtype == np.float32
    model.save(tmp_path / "model.keras")
    keras.mixed_precision.set_global_policy("float32")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("conv_1").compute_dtype == "bfloat16"


def test_an_unknown_precision_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"train.precision='float8': must be one of"):
        validate(compose(["train.precision=float8"]))
