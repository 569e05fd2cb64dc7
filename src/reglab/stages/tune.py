"""DVC stage `tune@<search>`: run one search; write best.yaml, trials.csv and figures."""

from pathlib import Path

from reglab.core.errors import ReglabError
from reglab.stages import read_config, run_stage, search_arguments


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.tune <search>")
    config = read_config()
    arguments = search_arguments()
    from reglab.tune.search import check_inputs

    # Before Ray, TensorFlow or any output.
    check_inputs(config, argv[0], arguments["ray_address_env"])
    from reglab.tune.results import write_outputs
    from reglab.tune.search import run_search

    outcome = run_search(config, argv[0], **arguments)
    write_outputs(outcome, Path(config.paths.tune, argv[0]), config.tracking.uri)


if __name__ == "__main__":
    run_stage(main)
