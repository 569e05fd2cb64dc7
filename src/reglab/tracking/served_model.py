"""The model MLflow serves: class probabilities, one column per class name.

An MLflow "model from code": :func:`reglab.tracking.log_keras_model` logs this
file with the trained Keras model (``model.keras``, which outputs logits, as
training and evaluation use it) as an artifact and the class names as the
model config. ``mlflow.pyfunc.load_model("runs:/<id>/model").predict(images)``
returns a DataFrame whose rows are softmax probabilities (summing to 1) and
whose columns are the class names. The file is copied into the logged model,
so it imports nothing from reglab but the project's registered regularizers,
when present, which a model that uses them needs to load, and the user's modules
that register theirs (logged with the model as its code paths).
"""

import contextlib
import importlib
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class ClassProbabilities(PythonModel):
    """Images (N, height, width, channels) in [0, 1] -> one probability column per class."""

    def load_context(self, context: Any) -> None:
        import keras

        with contextlib.suppress(ImportError):  # registers the project's regularizers
            import reglab.model.regularizers  # noqa: F401
        # The user's modules (shipped as the model's code paths) register theirs.
        for module in context.model_config.get("modules", []):
            importlib.import_module(module)
        self.model = keras.models.load_model(context.artifacts["keras_model"], compile=False)
        self.class_names = [str(name) for name in context.model_config["class_names"]]
        self.batch_size = int(context.model_config.get("batch_size", 512))

    # np.ndarray: a type hint MLflow accepts without deriving a schema from it (the
    # signature is the schema); Any, or none, makes it warn at every load.
    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> pd.DataFrame:
        images = np.asarray(model_input, dtype=np.float32)
        logits = self.model.predict(images, batch_size=self.batch_size, verbose=0)
        return pd.DataFrame(softmax(logits), columns=self.class_names)


mlflow.models.set_model(ClassProbabilities())
