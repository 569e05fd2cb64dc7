"""Where a model comes from: a builder function (built-in or the user's) or a saved file.

Naming a builder in the config runs its code, as an import does: the config is
no longer options only. Every failure here is one line naming the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras

from reglab.config.checks import ConfigError
from reglab.config.recipes import ModelConfig, RegularizerConfig
from reglab.core.digest import file_sha256, tree_digest
from reglab.model.imports import import_object, split_path
from reglab.model.recipe import find_output, functional


def import_builder(path: str) -> Callable[..., Any]:
    """``package.module.function`` (or ``package.module:function``) -> the function."""
    builder = import_object(path, "model.builder")
    if not callable(builder):
        raise ConfigError(
            f"model.builder={path!r}: {split_path(path)[1]!r} is a {type(builder).__name__}, "
            "not a function"
        )
    return builder


def code_files(model: ModelConfig, root: Path) -> list[Path]:
    """The user's model code under ``model.source`` (its ``.py`` files), for the run's
    record; none for the built-ins (the package's version and commit say which)."""
    if model.builtin is not None or model.file is not None:
        return []
    source = root / model.source
    found = [source] if source.is_file() else sorted(source.rglob("*.py"))
    return [path.relative_to(root) for path in found if "__pycache__" not in path.parts]


def code_digest(model: ModelConfig, root: Path) -> str:
    """What a checkpoint's model code is: the files of ``model.source`` (the saved file,
    for ``model.file``); the built-ins' is part of the package's."""
    if model.builtin is not None:
        return ""
    source = root / model.source
    if source.is_file():
        return file_sha256(source)
    return tree_digest(source, "*.py") if model.file is None else tree_digest(source, "*")


def import_user_modules(model: ModelConfig, recipes: Sequence[RegularizerConfig] = ()) -> None:
    """Import the modules that register the user's Keras objects, so a saved model that
    uses them loads in safe mode."""
    if model.builder_path is not None and model.builtin is None:
        import_builder(model.builder_path)
    for recipe in recipes:
        if recipe.custom.name is not None:
            import_object(recipe.custom.name, "custom.name")


def _call_builder(
    model: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> Any:
    builder = import_builder(str(model.builder_path))
    arguments = model.builder_arguments()
    try:
        takes_seed = "seed" in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        takes_seed = False
    if takes_seed:
        arguments["seed"] = seed
    try:
        return builder(tuple(input_shape), num_classes, **arguments)
    except TypeError as error:
        raise ConfigError(
            f"model.builder={model.builder_path!r} with model.kwargs={model.kwargs}: {error}; "
            "it is called as builder(input_shape, num_classes, **model.kwargs)"
        ) from None


def _load_file(model: ModelConfig) -> keras.Model:
    path = Path(str(model.file))
    if not path.is_file():
        raise ConfigError(f"model.file={model.file}: no such file; give a saved .keras model")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises several kinds for a bad file
        raise ConfigError(
            f"model.file={model.file}: Keras cannot load it ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); give a model saved with "
            "model.save('....keras'), its custom objects registered"
        ) from None


def base_model(
    model: ModelConfig, input_shape: Sequence[int], num_classes: int, seed: int
) -> keras.Model:
    """The plain model, before the recipe: built by the builder, or loaded from the file
    (re-initialized from the seed by ``clone_model`` unless ``keep_weights``).

    The caller seeds Keras first (``keras.utils.set_random_seed``), so a builder whose
    initializers take no seed still starts from the same weights for the same seed.
    """
    input_shape = tuple(input_shape)
    if model.file is not None:
        built = _load_file(model)
        if not model.keep_weights:
            built = keras.models.clone_model(built)
        where = f"model.file={model.file}"
    else:
        built = _call_builder(model, input_shape, num_classes, seed)
        where = f"model.builder={model.builder_path}"
        if not isinstance(built, keras.Model):
            raise ConfigError(
                f"{where}: returned a {type(built).__name__}, not a keras.Model; return "
                "keras.Model(inputs, outputs) or a keras.Sequential"
            )
    built = functional(built, input_shape)
    expected = (None, *input_shape)
    got = tuple(built.inputs[0].shape)
    if len(got) != len(expected) or any(
        a is not None and a != b for a, b in zip(got[1:], expected[1:], strict=False)
    ):
        raise ConfigError(
            f"{where}: the model takes inputs of shape {got[1:]}, the data has {input_shape}"
        )
    width = find_output(built).classifier.output.shape[-1]
    if width != num_classes:
        raise ConfigError(
            f"{where}: the output layer has {width} units, the data has {num_classes} "
            "classes; end the model with Dense(num_classes)"
        )
    return built
