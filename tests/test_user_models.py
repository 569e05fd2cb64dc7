"""A user's own Keras model: the recipe lands where it should, through clone_model.

The user modules here are written by the tests into a temporary folder put on
``sys.path`` (as a project folder is for the stages), plus the copyable
``examples/models.py``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from reglab.config.checks import ConfigError
from reglab.config.recipes import ModelConfig, RegularizerConfig
from reglab.model import builders
from reglab.model.build import build_model, describe_model
from reglab.model.recipe import apply_recipe
from reglab.model.source import code_digest, code_files
from reglab.model.weights import largest_dense_kernel, weight_arrays
from tests.conftest import PROJECT_ROOT, digits_splits

IMAGES = np.random.default_rng(0).random((16, 16, 16, 3), dtype=np.float32)

USER_MODULE = """
import keras
from keras import layers


def small_cnn(input_shape, num_classes, width=8):
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="features")(inputs)
    x = layers.MaxPooling2D(2, name="shrink")(x)
    x = layers.SeparableConv2D(width, 3, padding="same", name="separable")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def sequential(input_shape, num_classes):
    return keras.Sequential(
        [layers.Flatten(), layers.Dense(12, activation="relu"), layers.Dense(num_classes)]
    )


def relu_out(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    flat = layers.Flatten()(inputs)
    return keras.Model(inputs, layers.Dense(num_classes, activation="relu")(flat))


def wrong_width(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, layers.Dense(num_classes + 1)(layers.Flatten()(inputs)))


def not_a_model(input_shape, num_classes):
    return "a model, honestly"


NOT_CALLABLE = 3


@keras.saving.register_keras_serializable(package="usermod")
class Shrink(keras.regularizers.Regularizer):
    def __init__(self, strength=0.01):
        self.strength = strength

    def __call__(self, weights):
        return self.strength * keras.ops.sum(keras.ops.abs(weights) ** 3)

    def get_config(self):
        return {"strength": self.strength}
"""


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "usermodels").mkdir()
    (root / "usermodels" / "__init__.py").write_text("")
    (root / "usermodels" / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [name for name in sys.modules if name.startswith("usermodels")]:
        del sys.modules[name]


def user(builder: str, **options) -> ModelConfig:
    return ModelConfig(
        name="keras",
        builder=f"usermodels.nets.{builder}",
        source="usermodels",
        regularize_output=False,
        **options,
    )


def l2_recipe(strength: float = 1e-3) -> RegularizerConfig:
    recipe = RegularizerConfig()
    recipe.kernel.l2 = strength
    return recipe


def test_l2_lands_on_the_users_conv_and_dense_kernels_and_not_on_the_output(user_project):
    model = build_model(user("small_cnn"), l2_recipe(), (16, 16, 3), 4, seed=0)
    for name in ("features", "hidden"):
        config = model.get_layer(name).get_config()["kernel_regularizer"]
        assert config["class_name"] == "L2" and config["config"]["l2"] == pytest.approx(1e-3)
    separable = model.get_layer("separable")
    assert isinstance(separable.depthwise_regularizer, keras.regularizers.L2)
    assert isinstance(separable.pointwise_regularizer, keras.regularizers.L2)
    scores = model.get_layer("scores")
    assert scores.kernel_regularizer is None and scores.bias_regularizer is None
    # features, separable (depthwise + pointwise), hidden: four penalties, the numbers numpy's.
    assert len(model.losses) == 4
    kernels = [
        model.get_layer("features").kernel,
        separable.depthwise_kernel,
        separable.pointwise_kernel,
        model.get_layer("hidden").kernel,
    ]
    expected = sum(1e-3 * np.square(np.asarray(kernel)).sum() for kernel in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_dropout_goes_after_the_selected_layers_and_nowhere_else(user_project):
    recipe = RegularizerConfig()
    recipe.dropout.conv_rate = 0.3
    recipe.dropout.dense_rate = 0.4
    model = build_model(user("small_cnn"), recipe, (16, 16, 3), 4, seed=0)
    names = [layer.name for layer in model.layers]
    # After the conv's pooling layer (Conv -> Pool -> Dropout), after the separable
    # conv, after the hidden Dense; none after the output.
    assert names == [
        "pixels",
        "features",
        "shrink",
        "dropout_features",
        "separable",
        "dropout_separable",
        "gap",
        "hidden",
        "dropout_hidden",
        "scores",
    ]
    assert model.get_layer("dropout_features").rate == 0.3
    assert model.get_layer("dropout_hidden").rate == 0.4
    # A name pattern narrows the selection to one layer.
    recipe.layers.include = "hid.*"
    recipe.dropout.conv_rate = 0.0
    narrowed = build_model(user("small_cnn"), recipe, (16, 16, 3), 4, seed=0)
    dropouts = [layer.name for layer in narrowed.layers if isinstance(layer, layers.Dropout)]
    assert dropouts == ["dropout_hidden"]


def test_a_softmax_output_becomes_logits_with_the_same_probabilities(user_project):
    from usermodels.nets import small_cnn

    keras.utils.set_random_seed(1)
    original = small_cnn((16, 16, 3), 4)
    clone = apply_recipe(original, l2_recipe(), seed=0)
    scores = clone.get_layer("scores")
    assert scores.activation is keras.activations.linear
    logits = clone(IMAGES, training=False).numpy()
    probabilities = original(IMAGES, training=False).numpy()
    np.testing.assert_allclose(keras.ops.softmax(logits).numpy(), probabilities, rtol=1e-5)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities


def test_a_sequential_model_is_made_functional_and_regularized(user_project):
    recipe = l2_recipe()
    recipe.dropout.dense_rate = 0.5
    model = build_model(user("sequential"), recipe, (8, 8, 1), 10, seed=0)
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    assert [layer.kernel_regularizer is not None for layer in dense] == [True, False]
    assert [type(layer).__name__ for layer in model.layers][-2:] == ["Dropout", "Dense"]
    # Downstream code finds the layers by what they are, not by built-in names.
    name, values = largest_dense_kernel(model)
    assert name == f"{dense[0].name}/kernel" and values.shape == (64, 12)


def test_the_same_seed_gives_the_same_weights_for_a_builder_without_seeds(user_project):
    from reglab.train.fit import seed_everything

    def initial(seed: int) -> dict[str, np.ndarray]:
        keras.backend.clear_session()
        seed_everything(seed, deterministic=False)
        return weight_arrays(
            build_model(user("small_cnn"), RegularizerConfig(), (16, 16, 3), 4, seed)
        )

    first, again, other = initial(3), initial(3), initial(4)
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["features/kernel"], other["features/kernel"])


def test_a_users_registered_regularizer_is_saved_and_loaded_in_safe_mode(user_project, tmp_path):
    recipe = RegularizerConfig()
    recipe.custom.name = "usermodels.nets.Shrink"
    recipe.custom.arguments = {"strength": 0.5}
    model = build_model(user("small_cnn"), recipe, (16, 16, 3), 4, seed=0)
    hidden = model.get_layer("hidden")
    assert type(hidden.kernel_regularizer).__name__ == "Shrink"
    assert hidden.kernel_regularizer.strength == 0.5
    expected = 0.5 * np.sum(np.abs(np.asarray(hidden.kernel)) ** 3)
    penalties = [float(loss) for loss in model.losses]
    assert any(value == pytest.approx(expected, rel=1e-5) for value in penalties)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("hidden").kernel_regularizer).__name__ == "Shrink"
    assert float(sum(loaded.losses)) == pytest.approx(float(sum(model.losses)), rel=1e-6)
    assert "Shrink(strength=0.5)" in describe_model(loaded)


def test_a_saved_model_is_reinitialized_from_the_seed_unless_its_weights_are_kept(
    user_project, tmp_path
):
    from usermodels.nets import small_cnn

    keras.utils.set_random_seed(7)
    saved = small_cnn((16, 16, 3), 4)
    path = tmp_path / "pretrained.keras"
    saved.save(path)
    file_config = ModelConfig(
        name="keras", file=str(path), source=str(path), regularize_output=False
    )
    fresh = build_model(file_config, l2_recipe(), (16, 16, 3), 4, seed=0)
    assert not np.array_equal(
        fresh.get_layer("features").kernel.numpy(), saved.get_layer("features").kernel.numpy()
    )
    kept_config = ModelConfig(
        name="keras", file=str(path), source=str(path), keep_weights=True, regularize_output=False
    )
    kept = build_model(kept_config, l2_recipe(), (16, 16, 3), 4, seed=0)
    for layer in saved.layers:
        for a, b in zip(layer.get_weights(), kept.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert kept.get_layer("hidden").kernel_regularizer is not None


def test_the_examples_build_and_train_a_step_on_digits():
    splits = digits_splits()
    x, y = splits["train"][0][:64], splits["train"][1][:64]
    recipe = l2_recipe()
    recipe.dropout.dense_rate = 0.2
    for builder in ("resnet", "dense"):
        config = ModelConfig(
            name="keras",
            builder=f"examples.models.{builder}",
            source="examples",
            regularize_output=False,
        )
        model = build_model(config, recipe, x.shape[1:], 10, seed=0)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        loss = model.train_on_batch(x, y)
        assert np.isfinite(loss) and len(model.losses) >= 2


# ---------------------------------------------------------------- built-ins, bit for bit


def hand_built_cnn(recipe: RegularizerConfig, seed: int) -> keras.Model:
    """The default CNN with l2 and dropout written into its layers by hand, the way the
    built-in architecture was built before recipes were applied by cloning."""
    from reglab.core.seeds import seed_stream
    from reglab.model.regularizers import layer_regularization

    weights, randoms = seed_stream(seed, 0), seed_stream(seed, 1)

    def init():
        return {
            "kernel_initializer": keras.initializers.GlorotUniform(seed=next(weights)),
            "bias_initializer": keras.initializers.Zeros(),
        }

    conv, dense = layer_regularization(recipe, "conv"), layer_regularization(recipe, "dense")
    inputs = keras.Input(shape=(8, 8, 1), name="images")
    x = layers.GaussianNoise(recipe.gaussian_noise.stddev, seed=next(randoms))(inputs)
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, activation="relu", padding="same", **init(), **conv)(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        x = layers.Dropout(recipe.dropout.conv_rate, seed=next(randoms))(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", **init(), **dense)(x)
    x = layers.Dropout(recipe.dropout.dense_rate, seed=next(randoms))(x)
    outputs = layers.Dense(10, dtype="float32", **init(), **dense)(x)
    return keras.Model(inputs, outputs)


def test_the_builtin_cnn_through_clone_model_is_bit_identical_to_the_hand_built_one():
    recipe = l2_recipe()
    recipe.dropout.conv_rate = 0.25
    recipe.dropout.dense_rate = 0.5
    recipe.gaussian_noise.stddev = 0.1
    images = digits_splits()["train"][0][:32]
    cloned = apply_recipe(
        builders.cnn((8, 8, 1), 10, seed=5, padding="same"), recipe, 5, regularize_output=True
    )
    hand = hand_built_cnn(recipe, 5)
    for a, b in zip(cloned.get_weights(), hand.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Dropout and noise masks too: the same seeds in the same order.
    np.testing.assert_array_equal(
        cloned(images, training=True).numpy(), hand(images, training=True).numpy()
    )
    np.testing.assert_array_equal(
        np.array([float(v) for v in cloned.losses]), np.array([float(v) for v in hand.losses])
    )


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (
            "missing_module.build",
            "model.builder='missing_module.build': module 'missing_module' does not import",
        ),
        (
            "usermodels.nets.nowhere",
            "model.builder='usermodels.nets.nowhere': module 'usermodels.nets' has no 'nowhere'",
        ),
        ("usermodels.nets.NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a function"),
        ("usermodels.nets.not_a_model", "returned a str, not a keras.Model"),
        ("usermodels.nets.wrong_width", "the output layer has 5 units, the data has 4 classes"),
        ("usermodels.nets.relu_out", "ends in relu; end with a linear or softmax Dense layer"),
    ],
)
def test_a_bad_builder_is_one_line_naming_the_key(user_project, builder, message):
    config = ModelConfig(
        name="keras", builder=builder, source="usermodels", regularize_output=False
    )
    with pytest.raises(ConfigError) as error:
        build_model(config, RegularizerConfig(), (16, 16, 3), 4, seed=0)
    text = str(error.value)
    assert message in text and "\n" not in text


def test_a_recipe_that_matches_no_layer_is_refused(user_project):
    recipe = l2_recipe()
    recipe.layers.include = "no_such_layer"
    with pytest.raises(ConfigError, match=r"^kernel.l2=0.001: acts on conv/dense layers"):
        build_model(user("small_cnn"), recipe, (16, 16, 3), 4, seed=0)


def test_model_source_must_hold_the_builders_module(user_project):
    user("small_cnn").check_source(user_project)  # usermodels/ holds usermodels/nets.py
    (user_project / "elsewhere").mkdir(exist_ok=True)
    wrong = ModelConfig(name="keras", builder="usermodels.nets.small_cnn", source="elsewhere")
    with pytest.raises(
        ConfigError, match=r"model.source=elsewhere: does not hold usermodels/nets.py"
    ):
        wrong.check_source(user_project)
    missing = ModelConfig(name="keras", builder="usermodels.nets.small_cnn", source="nothing")
    with pytest.raises(ConfigError, match=r"model.source=nothing: no such file or folder"):
        missing.check_source(user_project)
    ModelConfig().check_source(Path("/nonexistent"))  # the built-ins: the package's own code


def test_the_users_code_is_what_a_checkpoint_and_a_run_record_depend_on(user_project):
    config = user("small_cnn")
    assert code_files(config, user_project) == [
        Path("usermodels/__init__.py"),
        Path("usermodels/nets.py"),
    ]
    before = code_digest(config, user_project)
    nets = user_project / "usermodels" / "nets.py"
    text = nets.read_text()
    nets.write_text(text + "\n# edited\n")
    try:
        assert code_digest(config, user_project) != before
    finally:
        nets.write_text(text)
    assert code_digest(config, user_project) == before
    assert code_files(ModelConfig(), PROJECT_ROOT) == []
