"""Registers reglab's config schema when DVC composes conf/ (`dvc exp run -S ...`).

DVC composes in its own process and, before it does, imports the Hydra plugins
found under the repository root (its `hydra.plugins_path`, by default the root).
Importing this package puts the schema into Hydra's ConfigStore there, so DVC
composes exactly what `reglab compose` does. Hydra finds no plugin class here;
the import is the point.
"""

from reglab.config.schema import register_schema

register_schema()
