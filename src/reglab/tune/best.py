"""The variant ``<search>_best``: a search's base recipe with the best parameters it found.

Light on purpose (no Ray, TensorFlow or plotting): the stages that train,
evaluate and compare the best variants import it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from reglab.config.schema import BEST_SUFFIX, Config
from reglab.core.errors import ReglabError

BEST_FILE = "best.yaml"


class MissingSearch(ReglabError):
    """A search's best.yaml is needed but the search has not run."""


def read_best(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / BEST_FILE
    if not path.exists():
        raise MissingSearch(f"{path} not found; run the search first (`dvc repro tune@<search>`)")
    return yaml.safe_load(path.read_text())


def search_of(variant: str) -> str | None:
    """The search a variant name stands for (``<search>_best``), if it is one."""
    return variant[: -len(BEST_SUFFIX)] if variant.endswith(BEST_SUFFIX) else None


def with_best_variant(config: Config, name: str) -> Config:
    """The config with variant ``<name>_best`` added: the base recipe + best.yaml's params."""
    search = config.search(name)
    best = read_best(Path(config.paths.tune, name))
    recipe = search.recipe(best["params"])
    return dataclasses.replace(config, variants={**config.variants, name + BEST_SUFFIX: recipe})


def with_best_variants(config: Config) -> Config:
    """The config with every search's ``<search>_best`` (the pipeline's leaderboard)."""
    for name in config.searches:
        config = with_best_variant(config, name)
    return config
