"""DVC stage `train@<variant>-<seed>`: train one variant under one seed from params.yaml,
then test it on the test set in the same process (one TensorFlow start-up per run)."""

from reglab.core.errors import ReglabError
from reglab.stages import read_config, run_stage, run_tags


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.train <variant>@<seed>")
    config = read_config()
    # TensorFlow loads only after the config is valid.
    from reglab.train.run import train_and_evaluate

    train_and_evaluate(config, argv[0], run_tags=run_tags())


if __name__ == "__main__":
    run_stage(main)
