"""Independent seeds drawn from one run seed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np


def seed_stream(seed: int, stream: int) -> Iterator[int]:
    """Independent seeds, one per draw: the index-th of stream ``stream`` under ``seed``."""
    for index in itertools.count():
        yield int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])
