"""The tutorials' script, as a user would write it: the comparison for a whole process.

``python bench/tutorial.py SPEC.json`` loads the preprocess stage's arrays with
``np.load`` and scales the uint8 pixels by the manifest's ``pixel_max``, builds
the default CNN as a ``keras.Sequential`` (with the variant's kernel penalties
and dropout, as the Keras examples add them), fits
it with ``validation_data`` and, as the tutorials end, evaluates it once on the
held-out test set (the train stage does too): nothing else, no tracking, no
outputs. :mod:`bench.whole` times the whole process, from start to exit; the
script appends the seconds its test evaluation took to ``SPEC.json``'s
``timings`` file, so the comparison without it comes from the same run. It
imports neither reglab nor bench, on purpose.
"""

import json
import sys
import time

import keras
import numpy as np


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    folder = spec["processed"]
    with open(f"{folder}/manifest.json") as handle:
        pixel_max = np.float32(json.load(handle)["pixel_max"])

    def images(split: str) -> np.ndarray:
        return np.load(f"{folder}/{split}_x.npy").astype(np.float32) / pixel_max

    x_train, y_train = images("train"), np.load(f"{folder}/train_y.npy")
    x_val, y_val = images("val"), np.load(f"{folder}/val_y.npy")
    keras.utils.set_random_seed(spec["seed"])
    penalty = None
    if spec["l1"] or spec["l2"]:
        penalty = keras.regularizers.L1L2(l1=spec["l1"], l2=spec["l2"])
    layers = [keras.Input(shape=x_train.shape[1:])]
    for filters in spec["conv_filters"]:
        layers += [
            keras.layers.Conv2D(
                filters, spec["kernel_size"], activation="relu", kernel_regularizer=penalty
            ),
            keras.layers.MaxPooling2D(2),
        ]
        if spec["conv_dropout"]:
            layers.append(keras.layers.Dropout(spec["conv_dropout"]))
    layers.append(keras.layers.Flatten())
    for units in spec["dense_units"]:
        layers.append(keras.layers.Dense(units, activation="relu", kernel_regularizer=penalty))
        if spec["dense_dropout"]:
            layers.append(keras.layers.Dropout(spec["dense_dropout"]))
    layers.append(keras.layers.Dense(spec["num_classes"], kernel_regularizer=penalty))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        batch_size=spec["batch_size"],
        epochs=spec["epochs"],
        validation_data=(x_val, y_val),
        verbose=0,
    )
    started = time.perf_counter()
    x_test, y_test = images("test"), np.load(f"{folder}/test_y.npy")
    model.evaluate(x_test, y_test, verbose=0)
    with open(spec["timings"], "a") as timings:
        timings.write(f"{time.perf_counter() - started}\n")


if __name__ == "__main__":
    main(sys.argv[1])
