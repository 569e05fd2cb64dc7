"""DVC stage `check`, the first of the pipeline: params.yaml valid and fresh, or nothing runs.

DVC deletes a stage's outputs just before it runs the stage. Every other stage
depends on this one, so a rejected config (a bad `dvc exp run -S` value, a
hand-edited params.yaml) stops the pipeline here, within a second or two,
before any output a user had is touched.
"""

from pathlib import Path

from reglab.compose import load_params
from reglab.io import write_atomic
from reglab.stages import run_stage


def main(argv: list[str]) -> None:
    config = load_params()
    # The same text for every valid config: the stages after this one re-run for
    # their own params, never because this file changed.
    write_atomic(Path(config.paths.check), "params.yaml is valid and the composition of conf/\n")


if __name__ == "__main__":
    run_stage(main)
