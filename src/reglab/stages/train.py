"""DVC stage `train@<variant>`: train one variant from params.yaml."""

from reglab.config import load_params
from reglab.errors import ReglabError
from reglab.stages import run_stage


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.train <variant>[@<seed>]")
    from reglab.runner import train_variant  # TensorFlow loads only after the config is valid

    train_variant(load_params(), argv[0])


if __name__ == "__main__":
    run_stage(main)
