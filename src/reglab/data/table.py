"""The user's CSV table: one row per example, a label column, numeric features.

pandas reads it (types inferred per column, so a column of text shows up as not
numeric). Categorical features are refused, not encoded: an encoding chosen
here (one-hot, ordinal, with or without the rare values) would be a modelling
decision made silently; the error says how to encode the column beforehand.
The features come out as float64 (N, F), unscaled: preprocess standardizes them
with the training split's statistics once the splits are cut.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from reglab.data.errors import DataError
from reglab.data.userdata import FEATURES, UserData, check_class_names

log = logging.getLogger(__name__)


def read_csv_table(path: Path, label_column: str, class_names: Sequence[str] = ()) -> UserData:
    """Features (float64, N x F) and int64 labels of a CSV file, checked."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.path); give the CSV file to read")
    content = path.read_bytes()
    try:
        frame = pd.read_csv(io.BytesIO(content))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: not a readable CSV file ({reason}); fix the file") from None
    if label_column not in frame.columns:
        raise DataError(
            f"{path}: no column data.label_column={label_column!r} (the columns are "
            f"{', '.join(map(str, frame.columns))}); set data.label_column to the column "
            "holding the classes"
        )
    if frame.empty:
        raise DataError(f"{path}: no rows below the header; give at least one row per class")
    features = [column for column in frame.columns if column != label_column]
    if not features:
        raise DataError(f"{path}: only the label column {label_column!r}; add feature columns")
    for column in frame.columns:
        missing = np.flatnonzero(frame[column].isna().to_numpy())
        if missing.size:
            row = int(missing[0])
            raise DataError(
                f"{path}: column {column!r} has a missing value in row {row + 1} (line "
                f"{row + 2} of the file; {missing.size} missing in all); fill in or drop "
                "the rows with missing values"
            )
    for column in features:
        if pd.api.types.is_bool_dtype(frame[column]) or pd.api.types.is_numeric_dtype(
            frame[column]
        ):
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
        raise DataError(
            f"{path}: feature column {column!r} is not numeric ({frame[column].iloc[row]!r} "
            f"in row {row + 1}); categorical features are refused: one-hot encode the column "
            "(e.g. pandas.get_dummies) or drop it, then point data.path at the new file"
        )
    values = frame[label_column].tolist()
    distinct = sorted(set(values))
    found = [str(value) for value in distinct]
    if len(set(found)) != len(found):
        raise DataError(
            f"{path}: label column {label_column!r} holds values that print the same "
            f"({found}); make the labels distinct as text"
        )
    if len(found) < 2:
        raise DataError(
            f"{path}: label column {label_column!r} holds a single class {found[0]!r}; "
            "a classifier needs at least 2"
        )
    names = check_class_names(found, class_names, f"column {label_column!r} of {path}")
    index = {name: label for label, name in enumerate(names)}
    by_value = {value: index[str(value)] for value in distinct}
    labels = np.array([by_value[value] for value in values], dtype=np.int64)
    inputs = frame[features].to_numpy(dtype=np.float64)
    if not np.isfinite(inputs).all():
        row, column = (int(axis[0]) for axis in np.nonzero(~np.isfinite(inputs)))
        raise DataError(
            f"{path}: column {features[column]!r} has a non-finite value in row {row + 1}; "
            "replace it with a number"
        )
    log.info("%s: %d rows, %d features, %d classes", path, len(labels), len(features), len(names))
    return UserData(
        {"train": (inputs, labels)},
        names,
        {path.name: hashlib.sha256(content).hexdigest()},
        FEATURES,
        [str(column) for column in features],
    )


def standardize(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, list[float]]]:
    """Standardize every split with the mean and standard deviation of "train" alone.

    A constant training column has std 0: it is divided by 1 (it stays constant)
    rather than by zero. Returns float32 features and the statistics used.
    """
    train = splits["train"][0]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    scaled = {
        split: (((inputs - mean) / scale).astype(np.float32), labels)
        for split, (inputs, labels) in splits.items()
    }
    return scaled, {"mean": mean.tolist(), "std": std.tolist()}
