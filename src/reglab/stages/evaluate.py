"""Test metrics of one trained run, named by its run key ``<variant>@<seed>``.

The pipeline's train stage tests its model right after training, in the same
process (:func:`reglab.train.run.train_and_evaluate`); the training itself never
sees the test set. ``python -m reglab.stages.evaluate <key>`` tests a trained
model alone, e.g. to look at a model again without retraining it.
"""

from reglab.core.errors import ReglabError
from reglab.stages import read_config, run_stage


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.evaluate <variant>@<seed>")
    config = read_config()
    from reglab.train.run import evaluate_run

    evaluate_run(config, argv[0])


if __name__ == "__main__":
    run_stage(main)
