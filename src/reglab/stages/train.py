"""DVC stage `train@<variant>-<seed>`: train one variant under one seed from params.yaml,
then evaluate it on the test set in the same process (:mod:`reglab.stages.evaluate`)."""

from reglab.config.compose import load_params
from reglab.core.errors import ReglabError
from reglab.stages import run_stage


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.train <variant>@<seed>")
    config = load_params()
    # TensorFlow loads only after the config is valid.
    from reglab.stages.evaluate import train_and_evaluate

    train_and_evaluate(config, argv[0])


if __name__ == "__main__":
    run_stage(main)
