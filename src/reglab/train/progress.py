"""What a user watching a training sees: one log line per epoch, or a bar on a terminal.

A log (``dvc repro > log``, CI) gets one line per epoch with the numbers a user
compares; an interactive terminal gets a tqdm bar with the same numbers as its
postfix instead, so the screen is not scrolled away by epochs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

log = logging.getLogger(__name__)


def epoch_line(key: str, epoch: int, epochs: int, row: Mapping[str, float], seconds: float) -> str:
    """``l2@42 epoch 3/20: train data loss 0.4123, val data loss 0.5012, penalty 0.0312,
    val accuracy 0.8150, 1.43 s`` (in hundredths: a tiny data set's epoch can take under 0.05 s)"""
    return (
        f"{key} epoch {epoch}/{epochs}: "
        f"train data loss {row['train_data_loss']:.4f}, "
        f"val data loss {row['val_data_loss']:.4f}, "
        f"penalty {row['train_penalty']:.4g}, "
        f"val accuracy {row['val_accuracy']:.4f}, "
        f"{seconds:.2f} s"
    )


class EpochProgress:
    """An epoch hook (``hook(epoch, row)``): a tqdm bar on a terminal, else a log line.

    Seconds are wall time since the previous epoch's end (since the hook was made,
    for the first epoch): what the user waited, epoch-end work included.
    """

    def __init__(
        self, key: str, epochs: int, start_epoch: int = 0, stream: TextIO | None = None
    ) -> None:
        self.key = key
        self.epochs = epochs
        self.last = time.perf_counter()
        stream = stream if stream is not None else sys.stderr
        self.bar: Any = None
        if _is_terminal(stream) and start_epoch < epochs:
            from tqdm import tqdm

            self.bar = tqdm(
                total=epochs,
                initial=start_epoch,
                desc=key,
                unit="epoch",
                file=stream,
                dynamic_ncols=True,
            )

    def __call__(self, epoch: int, row: Mapping[str, float]) -> None:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        if self.bar is None:
            log.info("%s", epoch_line(self.key, epoch, self.epochs, row, seconds))
            return
        self.bar.set_postfix(
            train=f"{row['train_data_loss']:.4f}",
            val=f"{row['val_data_loss']:.4f}",
            penalty=f"{row['train_penalty']:.3g}",
            acc=f"{row['val_accuracy']:.4f}",
            refresh=False,
        )
        self.bar.update(epoch - self.bar.n)
        if epoch >= self.epochs:
            self.close()

    def close(self) -> None:
        """End the bar (early stopping ends training before the last epoch); also at the
        end of a ``with`` block."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
