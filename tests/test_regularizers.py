"""Regularizers: penalty values against NumPy, serialization, the recipe -> Keras factory."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

from reglab.model.build import ModelConfig, build_model
from reglab.model.regularizers import (
    GroupLasso,
    RegularizerConfig,
    RegularizerSum,
    describe,
    kernel_constraint,
    kernel_regularizer,
    l1_l2_penalty,
    layer_regularization,
)
from tests.conftest import digits_splits

RNG = np.random.default_rng(7)
CONV_KERNEL = RNG.normal(size=(3, 3, 4, 6)).astype("float32")
DENSE_KERNEL = RNG.normal(size=(20, 8)).astype("float32")


def value(regularizer: keras.regularizers.Regularizer, weights: np.ndarray) -> float:
    return float(keras.ops.convert_to_numpy(regularizer(keras.ops.convert_to_tensor(weights))))


def numpy_group_lasso(strength: float, weights: np.ndarray) -> float:
    groups = weights.reshape(-1, weights.shape[-1])
    return strength * np.sqrt(groups.shape[0]) * np.linalg.norm(groups, axis=0).sum()


def numpy_orthogonal(factor: float, weights: np.ndarray, mode: str) -> float:
    vectors = weights if mode == "columns" else weights.T
    unit = vectors / np.linalg.norm(vectors, axis=0, keepdims=True)
    cosines = unit.T @ unit
    size = cosines.shape[0]
    off_diagonal = np.abs(cosines[~np.eye(size, dtype=bool)]).sum()
    return factor * 0.5 * off_diagonal / (size * (size - 1) / 2)


def recipe(**sections) -> RegularizerConfig:
    """A recipe from nested dicts, e.g. recipe(kernel={"l2": 1e-3})."""
    config = RegularizerConfig()
    for name, changes in sections.items():
        if not isinstance(changes, dict):
            setattr(config, name, changes)
            continue
        section = getattr(config, name)
        for key, item in changes.items():
            if isinstance(item, dict):
                for inner_key, inner in item.items():
                    setattr(getattr(section, key), inner_key, inner)
            else:
                setattr(section, key, item)
    return config


# ------------------------------------------------------------ values against NumPy


@pytest.mark.parametrize("weights", [CONV_KERNEL, DENSE_KERNEL], ids=["conv", "dense"])
def test_weight_penalties_match_numpy(weights):
    assert value(l1_l2_penalty(0.01, 0.0), weights) == pytest.approx(
        0.01 * np.abs(weights).sum(), rel=1e-5
    )
    assert value(l1_l2_penalty(0.0, 0.02), weights) == pytest.approx(
        0.02 * np.square(weights).sum(), rel=1e-5
    )
    assert value(l1_l2_penalty(0.01, 0.02), weights) == pytest.approx(
        0.01 * np.abs(weights).sum() + 0.02 * np.square(weights).sum(), rel=1e-5
    )
    assert l1_l2_penalty(0.0, 0.0) is None


@pytest.mark.parametrize("mode", ["columns", "rows"])
def test_orthogonal_penalty_matches_numpy(mode):
    regularizer = kernel_regularizer(recipe(orthogonal={"factor": 0.3, "mode": mode}), "dense")
    assert isinstance(regularizer, keras.regularizers.OrthogonalRegularizer)
    assert value(regularizer, DENSE_KERNEL) == pytest.approx(
        numpy_orthogonal(0.3, DENSE_KERNEL, mode), rel=1e-5
    )


def test_orthogonal_penalty_is_zero_for_orthogonal_columns():
    orthogonal_columns, _ = np.linalg.qr(RNG.normal(size=(20, 8)))
    regularizer = keras.regularizers.OrthogonalRegularizer(factor=1.0, mode="columns")
    assert value(regularizer, orthogonal_columns.astype("float32")) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("weights", [CONV_KERNEL, DENSE_KERNEL], ids=["conv", "dense"])
def test_group_lasso_matches_numpy(weights):
    assert value(GroupLasso(0.05), weights) == pytest.approx(
        numpy_group_lasso(0.05, weights), rel=1e-5
    )


def test_group_lasso_counts_each_filter_as_one_group():
    # Two filters: one zero, one all ones (36 weights, norm 6): sqrt(36) * 6 = 36.
    weights = np.zeros((3, 3, 4, 2), dtype="float32")
    weights[..., 1] = 1.0
    assert value(GroupLasso(1.0), weights) == pytest.approx(36.0, rel=1e-5)


def test_group_lasso_gradient_is_finite_at_a_zero_filter():
    weights = keras.Variable(np.zeros((3, 3, 2, 2), dtype="float32"))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = GroupLasso(1.0)(weights)
    gradient = tape.gradient(loss, weights.value)
    assert np.isfinite(gradient.numpy()).all()


def test_a_kernel_with_several_techniques_sums_their_penalties():
    config = recipe(kernel={"l2": 1e-3}, orthogonal={"factor": 0.1}, group_lasso={"dense": 1e-4})
    regularizer = kernel_regularizer(config, "dense")
    assert isinstance(regularizer, RegularizerSum)
    expected = (
        1e-3 * np.square(DENSE_KERNEL).sum()
        + numpy_orthogonal(0.1, DENSE_KERNEL, "columns")
        + numpy_group_lasso(1e-4, DENSE_KERNEL)
    )
    assert value(regularizer, DENSE_KERNEL) == pytest.approx(expected, rel=1e-5)
    # Orthogonality needs a rank-2 kernel, so conv layers only get the rest.
    assert describe(kernel_regularizer(config, "conv")) == "L2(l2=0.001)"


# ------------------------------------------------------------ per-layer-type strengths


def test_layer_type_overrides_replace_the_shared_strength():
    config = recipe(kernel={"l2": 1e-3, "conv": {"l2": 0.0}, "dense": {"l1": 1e-5}})
    assert config.kernel.strengths("conv") == (0.0, 0.0)
    assert config.kernel.strengths("dense") == (1e-5, 1e-3)
    assert kernel_regularizer(config, "conv") is None
    assert describe(kernel_regularizer(config, "dense")) == "L1L2(l1=1e-05, l2=0.001)"


def test_layer_regularization_gives_every_keyword_of_a_layer():
    config = recipe(
        bias={"l2": 1e-4}, activity={"dense": {"l1": 1e-5}}, max_norm={"max_value": 2.0}
    )
    conv = layer_regularization(config, "conv")
    dense = layer_regularization(config, "dense")
    assert describe(conv["bias_regularizer"]) == "L2(l2=0.0001)"
    assert conv["activity_regularizer"] is None
    assert describe(dense["activity_regularizer"]) == "L1(l1=1e-05)"
    assert describe(conv["kernel_constraint"]) == "MaxNorm(max_value=2, axis=[0, 1, 2])"
    assert describe(dense["kernel_constraint"]) == "MaxNorm(max_value=2, axis=0)"
    with pytest.raises(ValueError, match="layer_type must be one of"):
        layer_regularization(config, "pool")


def test_max_norm_bounds_each_filter_norm():
    constraint = kernel_constraint(recipe(max_norm={"max_value": 1.5}), "conv")
    constrained = keras.ops.convert_to_numpy(constraint(keras.ops.convert_to_tensor(CONV_KERNEL)))
    norms = np.linalg.norm(constrained.reshape(-1, constrained.shape[-1]), axis=0)
    assert norms.max() == pytest.approx(1.5, rel=1e-4)
    original = np.linalg.norm(CONV_KERNEL.reshape(-1, CONV_KERNEL.shape[-1]), axis=0)
    assert (original > 1.5).all()  # so every filter was rescaled, not clipped element-wise


# ------------------------------------------------------------ serialization


@pytest.mark.parametrize(
    "regularizer",
    [
        GroupLasso(0.003),
        RegularizerSum([keras.regularizers.L2(0.01), GroupLasso(0.002)]),
        RegularizerSum(
            [keras.regularizers.L1L2(1e-5, 1e-3), keras.regularizers.OrthogonalRegularizer(0.1)]
        ),
    ],
    ids=["group_lasso", "l2+group_lasso", "l1l2+orthogonal"],
)
def test_custom_regularizers_round_trip(regularizer):
    config = regularizer.get_config()
    # get_config returns exactly the constructor's arguments.
    assert set(config) == set(inspect.signature(type(regularizer).__init__).parameters) - {"self"}
    rebuilt = type(regularizer).from_config(config)
    assert rebuilt.get_config() == config
    assert value(rebuilt, DENSE_KERNEL) == pytest.approx(value(regularizer, DENSE_KERNEL))
    # And through Keras's registry, as a saved model does it.
    serialized = keras.regularizers.serialize(regularizer)
    assert serialized["registered_name"].startswith("reglab>")
    restored = keras.regularizers.deserialize(serialized)
    assert type(restored) is type(regularizer)
    assert value(restored, DENSE_KERNEL) == pytest.approx(value(regularizer, DENSE_KERNEL))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GroupLasso(-0.1), "strength=-0.1"),
        (lambda: GroupLasso(float("nan")), "strength=nan"),
        (lambda: GroupLasso("0.1"), "strength='0.1'"),
        (lambda: RegularizerSum([]), "regularizers=[]"),
        (lambda: RegularizerSum([0.1]), "0.1"),
    ],
)
def test_custom_regularizers_name_a_bad_argument(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


def test_group_lasso_needs_an_output_axis():
    with pytest.raises(ValueError, match=r"shape=\(5,\)"):
        GroupLasso(0.1)(keras.ops.ones((5,)))


# ------------------------------------------------------------ measured behaviour


def kernel_weights(model: keras.Model) -> np.ndarray:
    return np.concatenate(
        [layer.kernel.numpy().ravel() for layer in model.layers if hasattr(layer, "kernel")]
    )


def test_l1_leaves_more_near_zero_weights_than_l2():
    """Same model, seed, data and strength: L1's constant pull sends weights to zero."""
    splits = digits_splits()
    x_train, y_train = splits["train"]
    model_config = ModelConfig(name="mlp", conv_filters=[], dense_units=[64])
    near_zero = {}
    for penalty in ("l1", "l2"):
        config = recipe(kernel={penalty: 1e-3})
        model = build_model(model_config, config, x_train.shape[1:], 10, seed=0)
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x_train, y_train, batch_size=32, epochs=6, verbose=0, shuffle=False)
        near_zero[penalty] = float(np.mean(np.abs(kernel_weights(model)) < 1e-3))
    # Measured here: 23% of the kernel weights for L1, 4% for L2.
    assert near_zero["l1"] > 2 * near_zero["l2"], near_zero
    assert near_zero["l1"] > 0.15, near_zero
