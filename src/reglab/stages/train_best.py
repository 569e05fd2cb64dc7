"""DVC stage `train_best@<search>-<seed>`: train ``<search>_best@<seed>``, the search's
base recipe with the parameters of its best.yaml, then test it once, in the same
process, as the train stage does for every variant."""

from reglab.config.paths import RunKey
from reglab.core.errors import ReglabError
from reglab.stages import read_config, run_stage, run_tags
from reglab.tune.best import search_of, with_best_variant


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.train_best <search>_best@<seed>")
    key = RunKey.parse(argv[0])
    name = search_of(key.variant)
    if name is None:
        raise ReglabError(f"{argv[0]!r}: expected <search>_best@<seed>")
    config = with_best_variant(read_config(), name)
    # TensorFlow loads only after the config is valid.
    from reglab.train.run import train_and_evaluate

    train_and_evaluate(config, key, run_tags=run_tags())


if __name__ == "__main__":
    run_stage(main)
