"""Search spaces: the shipped ones compose and validate; bad input is one line, nothing written.

No Ray cluster and no training here: every check runs before either starts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from reglab import cli
from reglab.config.checks import ConfigError
from reglab.core.net import free_port
from tests.conftest import DIGITS, PROJECT_ROOT, config_for

SEARCHES = ("l2_strength", "l1_strength", "dropout_rate", "weight_decay", "combined")


def test_every_shipped_search_validates_against_its_base_recipe():
    config = config_for()
    assert set(SEARCHES) <= set(config.search_spaces)
    assert config.searches == []  # the default pipeline runs no search
    l2 = config.search("l2_strength")
    assert [(p.key, p.low, p.high, p.log) for p in l2.params] == [("kernel.l2", 1e-6, 1e-1, True)]
    assert (l2.objective, l2.mode, l2.n_trials, l2.epochs, l2.seed) == (
        "val_data_loss",
        "min",
        12,
        None,  # train.epochs: scored as the recommended variant is trained
        0,
    )
    assert l2.base.kernel.l2 == 1e-3 and l2.base.dropout.dense_rate == 0.0
    combined = config.search("combined")
    assert [p.key for p in combined.params] == [
        "kernel.l2",
        "dropout.dense_rate",
        "early_stopping.enabled",
    ]
    assert combined.params[2].choices == [True, False]
    assert combined.base.early_stopping.enabled and combined.base.dropout.dense_rate == 0.5
    dropout = config.search("dropout_rate")
    assert {p.key for p in dropout.params} == {"dropout.conv_rate", "dropout.dense_rate"}
    assert config.search("weight_decay").params[0].key == "weight_decay"
    assert config.search("l1_strength").params[0].key == "kernel.l1"
    accuracy = config_for("search_spaces.l2_strength.objective=val_accuracy")
    assert accuracy.search("l2_strength").mode == "max"


def test_the_default_pipeline_is_unchanged_by_the_searches():
    """params.yaml holds the search spaces, but no stage of a plain `dvc repro` runs one."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert params["searches"] == []
    assert params["tune"]["max_concurrent"] == 2 and params["tune"]["address"] is None


def test_a_recipe_from_the_space_sets_only_the_searched_keys():
    search = config_for().search("combined")
    recipe = search.recipe({"kernel.l2": 1e-3, "early_stopping.enabled": False})
    assert recipe.kernel.l2 == 1e-3 and not recipe.early_stopping.enabled
    assert recipe.dropout.dense_rate == search.base.dropout.dense_rate
    with pytest.raises(ConfigError, match=r"dropout.dense_rate=1.5: must be < 1"):
        search.recipe({"dropout.dense_rate": 1.5})


def test_the_best_variant_is_the_base_recipe_with_best_yaml(tmp_path):
    from reglab.tune.best import MissingSearch, with_best_variant, with_best_variants

    config = config_for(f"paths.tune={tmp_path}", "searches=[l2_strength]")
    with pytest.raises(MissingSearch, match="best.yaml not found"):
        with_best_variant(config, "l2_strength")
    (tmp_path / "l2_strength").mkdir()
    (tmp_path / "l2_strength/best.yaml").write_text("params: {kernel.l2: 0.00123}\n")
    best = with_best_variants(config)
    assert set(best.variants) == {*config.variants, "l2_strength_best"}
    assert best.variants["l2_strength_best"].kernel.l2 == 0.00123
    assert best.variants["l2_strength_best"].dropout == config.search("l2_strength").base.dropout


def test_a_best_variant_may_not_shadow_a_hand_picked_one():
    import dataclasses

    config = config_for("searches=[l2_strength]")
    config.variants["l2_strength_best"] = dataclasses.replace(config.variants["l2"])
    with pytest.raises(ConfigError, match="adds variant 'l2_strength_best', which variants"):
        config.validate()


def test_trials_csv_and_the_figures(tmp_path):
    from reglab.tune.outcome import Trial, best_trial
    from reglab.tune.results import write_outputs

    search = config_for().search("l2_strength")
    trials = [
        Trial(0, "a", {"kernel.l2": 1e-4}, 0.5, 3, "completed", "r0", None, [0.9, 0.6, 0.5]),
        Trial(1, "b", {"kernel.l2": 1e-2}, 0.9, 1, "pruned", "r1", None, [0.9]),
        Trial(2, "c", {"kernel.l2": 1e-1}, math.nan, 1, "failed", "r2", "TrainingDiverged"),
        Trial(3, "d", {"kernel.l2": 1e-3}, 0.4, 3, "completed", "r3", None, [0.8, 0.5, 0.4]),
    ]
    best = best_trial(trials, "min")
    assert best.trial_id == "d"
    outcome = SimpleNamespace(
        name="l2_strength",
        search=search,
        trials=trials,
        best=best,
        finalists=[],
        repeats=[],
        single_best=best,
    )
    write_outputs(outcome, tmp_path)
    written = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert written["params"] == {"kernel.l2": 1e-3} and written["value"] == 0.4
    assert written["single_best_trial"] == 3 and written["runner_up"] is None
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    header = "trial,kernel.l2,objective,epochs,state,trial_id,run_id,epoch_seconds,start_latency_s"
    assert rows[0] == header
    assert rows[3] == "2,0.1,,1,failed,c,r2,0.000,"
    figures = sorted(path.name for path in (tmp_path / "figures").iterdir())
    assert figures == [
        "objective_vs_kernel.l2.png",
        "optimization_history.png",
        "optuna_history.png",
        "optuna_importance.png",
        "optuna_intermediate.png",
        "optuna_parallel.png",
        "optuna_slice.png",
    ]
    assert all((tmp_path / "figures" / name).stat().st_size > 5000 for name in figures)
    import optuna

    study = optuna.load_study(study_name="l2_strength", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert study.best_trial.number == 3 and study.best_value == 0.4
    assert study.trials[1].intermediate_values == {1: 0.9}


def test_the_reporter_sends_the_objective_at_the_weights_the_trial_keeps(monkeypatch):
    """Without early stopping (or without restoring) the epoch's own value; under early
    stopping that restores its best weights, the value at the best epoch so far by the
    rule's monitor; a diverged value as the worst."""
    from reglab.config.recipes import EarlyStoppingConfig
    from reglab.tune.trial import Reporter

    reported = []
    monkeypatch.setattr("ray.tune.report", lambda metrics: reported.append(metrics))
    rows = [
        {"epoch": epoch, "val_data_loss": loss, "val_accuracy": accuracy}
        for epoch, (loss, accuracy) in enumerate(
            [(0.7, 0.5), (0.5, 0.6), (0.6, 0.8), (float("nan"), 0.1)], start=1
        )
    ]

    def reports(objective, rule):
        reported.clear()
        reporter = Reporter([objective], rule)
        for row in rows:
            reporter(row["epoch"], row)
        return [(r["objective"], r["kept_epoch"]) for r in reported]

    last = EarlyStoppingConfig()
    inf = float("inf")
    assert reports("val_data_loss", last) == [(0.7, 1), (0.5, 2), (0.6, 3), (inf, 4)]
    assert reports("val_accuracy", last) == [(0.5, 1), (0.6, 2), (0.8, 3), (0.1, 4)]
    restoring = EarlyStoppingConfig(enabled=True, patience=5)
    assert reports("val_data_loss", restoring) == [(0.7, 1), (0.5, 2), (0.5, 2), (0.5, 2)]
    # The kept epoch is the monitor's best (val_data_loss), scored by the objective.
    assert reports("val_accuracy", restoring) == [(0.5, 1), (0.6, 2), (0.6, 2), (0.6, 2)]
    by_accuracy = EarlyStoppingConfig(enabled=True, monitor="val_accuracy")
    assert reports("val_data_loss", by_accuracy)[2:] == [(0.6, 3), (0.6, 3)]
    # min_delta: 0.7 -> 0.5 is not an improvement of more than 0.25.
    coarse = EarlyStoppingConfig(enabled=True, min_delta=0.25)
    assert reports("val_data_loss", coarse) == [(0.7, 1), (0.7, 1), (0.7, 1), (0.7, 1)]
    not_restoring = EarlyStoppingConfig(enabled=True, restore_best_weights=False)
    assert reports("val_data_loss", not_restoring)[2] == (0.6, 3)


def test_the_last_epochs_report_waits_for_the_trials_final_logging(monkeypatch):
    """ASHA may stop a trial at its last epoch's report, and Ray's stop ends the trial
    there: that report is held until flush(), after train_variant has logged the run."""
    from reglab.config.recipes import EarlyStoppingConfig
    from reglab.tune.trial import Reporter

    reported = []
    monkeypatch.setattr("ray.tune.report", lambda metrics: reported.append(metrics))
    reporter = Reporter(["val_data_loss"], EarlyStoppingConfig(), last_epoch=3)
    for epoch, loss in enumerate((0.9, 0.8, 0.7), start=1):
        reporter(epoch, {"epoch": epoch, "val_data_loss": loss, "val_accuracy": 0.5})
    assert [r["epoch"] for r in reported] == [1, 2]
    reporter.flush()
    assert [(r["epoch"], r["objective"]) for r in reported] == [(1, 0.9), (2, 0.8), (3, 0.7)]
    reporter.flush()  # nothing held any more
    assert len(reported) == 3


def test_a_search_with_two_objectives_reports_each_at_the_kept_weights(monkeypatch):
    from reglab.config.recipes import EarlyStoppingConfig
    from reglab.tune.trial import Reporter

    reported = []
    monkeypatch.setattr("ray.tune.report", lambda metrics: reported.append(metrics))
    restoring = EarlyStoppingConfig(enabled=True, patience=5)
    reporter = Reporter(["val_data_loss", "sparsity", "val_ece"], restoring)
    rows = [(0.7, 0.1, 0.05), (0.5, 0.2, 0.04), (0.6, 0.3, float("nan"))]
    for epoch, (loss, sparsity, ece) in enumerate(rows, start=1):
        row = {"val_data_loss": loss, "val_accuracy": 0.5, "sparsity": sparsity, "val_ece": ece}
        reporter(epoch, {"epoch": epoch, **row})
    keys = ("objective", "objective_val_data_loss", "objective_sparsity", "objective_val_ece")
    # Epoch 3 does not improve on epoch 2: the kept weights are epoch 2's, for every
    # objective (a NaN where they are kept would be the worst: +inf for a minimised one).
    assert [tuple(r[k] for k in keys) for r in reported] == [
        (0.7, 0.7, 0.1, 0.05),
        (0.5, 0.5, 0.2, 0.04),
        (0.5, 0.5, 0.2, 0.04),
    ]
    reported.clear()
    last = Reporter(["val_accuracy", "val_ece"], EarlyStoppingConfig())
    last(1, {"epoch": 1, "val_data_loss": 0.5, "val_accuracy": 0.8, "val_ece": float("nan")})
    assert (reported[0]["objective_val_accuracy"], reported[0]["objective_val_ece"]) == (
        0.8,
        float("inf"),
    )


def test_a_search_with_two_objectives_gives_its_pareto_front(tmp_path):
    """The front is the completed trials no other beats on both objectives (found by hand
    here), best first by the first objective; best.yaml, trials.csv and the study hold it."""
    import csv
    import io

    import optuna

    from reglab.report.optuna_study import PARETO, pareto_front
    from reglab.tune.outcome import SearchOutcome, Trial
    from reglab.tune.results import best_record, trials_csv, write_outputs

    config = config_for("search_spaces.l1_strength.objective=[val_data_loss,sparsity]")
    search = config.search("l1_strength")
    # (val_data_loss, sparsity): 0 and 2 and 4 are on the front; 1 is beaten by 0
    # (worse loss, less sparse); 3 by 2 (same sparsity, worse loss); 5 failed.
    points = [(0.30, 0.10), (0.35, 0.05), (0.40, 0.60), (0.45, 0.60), (0.60, 0.90), (None, None)]
    trials = []
    for number, (loss, sparsity) in enumerate(points):
        failed = loss is None
        values = {"val_data_loss": math.nan if failed else loss,
                  "sparsity": math.nan if failed else sparsity}  # fmt: skip
        trials.append(
            Trial(
                number=number,
                trial_id=f"t{number}",
                params={"kernel.l1": 10.0 ** -(7 - number)},
                objective=values["val_data_loss"],
                epochs=0 if failed else 3,
                state="failed" if failed else "completed",
                values=values,
            )
        )
    front = pareto_front(search, trials)
    assert [t.number for t in front] == [0, 2, 4]
    outcome = SearchOutcome(
        "l1_strength", search, trials, front[0], "parent", single_best=front[0], front=front
    )
    record = best_record(outcome)
    assert record["objective"] == ["val_data_loss", "sparsity"]
    assert (record["trial"], record["value"]) == (0, 0.30)
    assert record["objectives"] == {"val_data_loss": 0.30, "sparsity": 0.10}
    assert record["pareto_front"] == [
        {"trial": t.number, "params": t.params, "values": t.values} for t in front
    ]
    rows = list(csv.DictReader(io.StringIO(trials_csv(trials, search))))
    assert [(r["objective"], r["val_data_loss"], r["sparsity"]) for r in rows[:2]] == [
        ("0.3", "0.3", "0.1"),
        ("0.35", "0.35", "0.05"),
    ]
    assert (rows[5]["objective"], rows[5]["sparsity"], rows[5]["state"]) == ("", "", "failed")

    write_outputs(outcome, tmp_path)
    study = optuna.load_study(study_name="l1_strength", storage=f"sqlite:///{tmp_path}/study.db")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert sorted(t.number for t in study.best_trials) == [0, 2, 4]
    assert study.trials[3].values == [0.45, 0.60]
    assert (tmp_path / "figures" / PARETO).stat().st_size > 10_000


def test_a_trials_training_seconds_and_start_latency_from_its_reports(tmp_path):
    """Its epochs' seconds summed (NaN: an epoch reported again, not trained), and the
    time from Ray's last start of it to the first epoch that began after that start."""
    import pandas as pd

    from reglab.tune.callbacks import TrialStarts, trial_starts
    from reglab.tune.engine import timing

    starts = TrialStarts(tmp_path)
    for trial_id in ("a", "b", "a"):
        starts.on_trial_start(0, [], SimpleNamespace(trial_id=trial_id))
    stored = trial_starts(tmp_path)
    assert sorted(stored) == ["a", "b"] and len(stored["a"]) == 2
    assert stored["a"][0] <= stored["b"][0] <= stored["a"][1]
    # Started at 100, killed, started again at 200: epochs 1-2 reported again, 3 trained.
    frame = pd.DataFrame(
        {"epoch": [1, 2, 1, 2, 3], "epoch_seconds": [2.0, 1.5, None, None, 1.25]}
    ).assign(epoch_began=[100.5, 102.5, None, None, 203.0])
    result = SimpleNamespace(metrics_dataframe=frame)
    assert timing(result, [100.0, 200.0]) == (4.75, 3.0)
    assert timing(result, [100.0]) == (4.75, 0.5)
    assert timing(result, [300.0])[0] == 4.75 and math.isnan(timing(result, [300.0])[1])
    assert timing(SimpleNamespace(metrics_dataframe=frame[["epoch"]]), [1.0])[0] == 0.0


def test_a_trial_that_failed_at_its_workers_reset_keeps_its_own_id_and_params():
    """Ray gives a trial that never reported what its worker's Trainable says of itself:
    for one that failed because its reused worker could not be reset for it, the previous
    trial's id and config (Ray's Result.config is its last report's). Each trial keeps
    its own: the id of its folder, the config of Ray's experiment state."""
    from ray.tune import Result

    from reglab.tune.engine import collect, own_trials

    folder = "/state/ray-1/run_trial_{}_{}_kernel_l2={}_2026-12-03_05-54-01"
    previous = {"trial_id": "a847e5f9", "config": {"kernel.l2": 2.4e-5}, "epoch": 1}
    reset_failed = RuntimeError("Trainable runner reuse requires reset_config() to be ...")
    results = [
        Result(metrics={**previous, "objective": 0.62}, checkpoint=None, error=None,
               path=folder.format("a847e5f9", 6, "0.0000")),
        Result(metrics=dict(previous), checkpoint=None, error=reset_failed,
               path=folder.format("2f5a73f8", 7, "0.0000")),
    ]  # fmt: skip
    assert results[1].config == {"kernel.l2": 2.4e-5}  # Ray's own answer: the previous one's
    configs = {"a847e5f9": {"kernel.l2": 2.4e-5}, "2f5a73f8": {"kernel.l2": 2.7e-6}}
    own = own_trials(results, configs)
    assert [(t.trial_id, t.index, t.config) for t in own] == [
        ("a847e5f9", 6, {"kernel.l2": 2.4e-5}),
        ("2f5a73f8", 7, {"kernel.l2": 2.7e-6}),
    ]
    assert own[0].metrics["objective"] == 0.62 and own[1].metrics == {}

    run = SimpleNamespace(
        info=SimpleNamespace(status="FINISHED", run_id="r6"), data=SimpleNamespace(tags={})
    )
    search = config_for().search("l2_strength")
    trials = collect({"a847e5f9": run}, search, 1, own, {})
    assert [(t.number, t.trial_id, t.params, t.state, t.mlflow_run_id) for t in trials] == [
        (0, "a847e5f9", {"kernel.l2": 2.4e-5}, "completed", "r6"),
        (1, "2f5a73f8", {"kernel.l2": 2.7e-6}, "failed", None),
    ]
    assert trials[1].epochs == 0 and "reset_config()" in trials[1].error


def test_the_likely_best_is_the_best_mean_over_seeds_not_the_luckiest_trial(tmp_path):
    """Trial 0 is the single best (0.40 under seed 42), but over seeds 42-44 trial 3
    is better on average (0.45 against 0.46); a failed repeat ranks its finalist last."""
    from scipy import stats

    from reglab.tune.finalists import Repeat, pick_finalists, rank
    from reglab.tune.outcome import Trial
    from reglab.tune.results import best_record

    trials = [
        Trial(0, "a", {"kernel.l2": 1e-4}, 0.40, 3, "completed", "r0"),
        Trial(1, "b", {"kernel.l2": 1e-2}, 0.30, 1, "pruned", "r1"),
        Trial(2, "c", {"kernel.l2": 1e-1}, 0.47, 3, "completed", "r2"),
        Trial(3, "d", {"kernel.l2": 1e-3}, 0.45, 3, "completed", "r3"),
        Trial(4, "e", {"kernel.l2": 1e-5}, math.nan, 0, "failed", "r4"),
    ]
    chosen = pick_finalists(trials, "min", 3, repeats=2)
    assert [t.number for t in chosen] == [0, 3, 2]  # the completed ones, best first
    # Places left go to the pruned trials that trained the most epochs (with repeats:
    # a pruned finalist is scored on them alone); never to a failed one.
    more = [*trials, Trial(5, "f", {"kernel.l2": 3e-4}, 0.35, 2, "pruned", "r5")]
    assert [t.number for t in pick_finalists(more, "min", 6, repeats=2)] == [0, 3, 2, 5, 1]
    assert [t.number for t in pick_finalists(more, "min", 6, repeats=0)] == [0, 3, 2]
    late = rank([more[5]], [Repeat(5, 43, 0.41, 3, "completed")], 42, "min")[0]
    assert late.values == {43: 0.41} and late.std is None
    assert rank([more[5]], [], 42, "min")[0].summary()["values"] == []
    repeats = [
        Repeat(0, 43, 0.50, 3, "completed"),
        Repeat(0, 44, 0.48, 3, "completed"),
        Repeat(3, 44, 0.46, 3, "completed"),  # out of order: sorted by seed
        Repeat(3, 43, 0.44, 3, "completed"),
        Repeat(2, 43, 0.30, 3, "completed"),
        Repeat(2, 44, math.nan, 1, "failed"),
    ]
    ranked = rank(chosen, repeats, 42, "min")
    assert [f.trial.number for f in ranked] == [3, 0, 2]
    assert ranked[0].values == {42: 0.45, 43: 0.44, 44: 0.46}
    assert ranked[0].mean == pytest.approx(0.45) and ranked[0].std == pytest.approx(0.01)
    assert ranked[1].mean == pytest.approx(0.46)
    outcome = SimpleNamespace(
        name="l2_strength",
        search=config_for().search("l2_strength"),
        trials=trials,
        best=ranked[0].trial,
        finalists=ranked,
        repeats=repeats,
        single_best=trials[0],
    )
    record = best_record(outcome)
    assert record["params"] == {"kernel.l2": 1e-3} and record["trial"] == 3
    assert record["value"] == pytest.approx(0.45) and record["seeds"] == [42, 43, 44]
    assert record["single_best_trial"] == 0
    assert record["runner_up"]["trial"] == 0
    # Runner-up minus best, paired by seed: (-0.05, +0.06, +0.02), mean +0.01.
    difference = record["difference"]
    expected = stats.ttest_rel([0.40, 0.50, 0.48], [0.45, 0.44, 0.46])
    assert difference["runner_up_minus_best"] == pytest.approx(0.01)
    assert difference["test"] == "paired" and difference["seeds"] == 3
    assert difference["p_value"] == pytest.approx(expected.pvalue)
    interval = expected.confidence_interval(0.95)
    assert difference["ci95"] == pytest.approx([interval.low, interval.high])
    assert difference["within_noise"] is True  # p about 0.8
    # One seed each (repeats=0): the single best, no verdict on the runner-up.
    alone = rank(chosen, [], 42, "min")
    assert [f.trial.number for f in alone] == [0, 3, 2] and alone[0].std is None
    record = best_record(
        SimpleNamespace(**(vars(outcome) | {"finalists": alone, "best": trials[0]}))
    )
    assert record["value"] == 0.40 and record["difference"]["within_noise"] is None


BAD_INPUT = [
    (["search=nope"], "error: search='nope': unknown; choose one of ['combined', "),
    (
        ["search=l2_strength", "search_spaces.l2_strength.params.0.key=kernel.l3"],
        "error: search_spaces.l2_strength.params[0].key='kernel.l3': not a key of the recipe",
    ),
    (
        ["search=l2_strength", "search_spaces.l2_strength.params.0.low=0.5"],
        "error: search_spaces.l2_strength.params[0].low=0.5 >= high=0.1 for kernel.l2: "
        "the range is empty or inverted",
    ),
    (
        ["search=l2_strength", "search_spaces.l2_strength.params.0.high=1.0e-6"],
        "error: search_spaces.l2_strength.params[0].low=1e-06 >= high=1e-06 for kernel.l2: "
        "the range is empty or inverted",
    ),
    (
        ["search=l2_strength", "search_spaces.l2_strength.params=[]"],
        "error: search_spaces.l2_strength.params=[]: name at least one recipe key to search",
    ),
    (["search=l2_strength", "tune.n_trials=0"], "error: tune.n_trials=0: must be >= 1"),
    (
        ["search=l2_strength", "search_spaces.l2_strength.n_trials=0"],
        "error: search_spaces.l2_strength.n_trials=0: must be >= 1",
    ),
    (
        ["search=dropout_rate", "search_spaces.dropout_rate.params.1.high=1.5"],
        "error: search_spaces.dropout_rate.params[1] (dropout.dense_rate=1.5): "
        "dropout.dense_rate=1.5: must be < 1",
    ),
    (
        ["search=l2_strength", "tune.sampler=grid"],
        "error: tune.sampler='grid' with search_spaces.l2_strength.params[0] (kernel.l2) a range",
    ),
    (
        ["search=l2_strength", "tune.address=127.0.0.1:{port}"],
        "error: tune.address='127.0.0.1:{port}': no Ray head answers there",
    ),
    (
        ["search=l2_strength", "tune.address=headnode"],
        "error: tune.address='headnode': expected host:port of a Ray head",
    ),
    (
        ["search=l1_strength", "search_spaces.l1_strength.objective=sparsity"],
        "error: search_spaces.l1_strength: objective='sparsity': says nothing of the model's "
        "quality alone; pair it with one of ['val_data_loss', 'val_accuracy', 'val_ece']",
    ),
    (
        ["search=l1_strength", "search_spaces.l1_strength.objective=[val_data_loss,loss]"],
        "error: search_spaces.l1_strength: objective=['val_data_loss', 'loss']: name one of "
        "['val_data_loss', 'val_accuracy', 'val_ece', 'sparsity'], or a list of them",
    ),
    (
        ["search=l1_strength", "search_spaces.l1_strength.objective=[val_ece,val_ece]"],
        "error: search_spaces.l1_strength: objective=['val_ece', 'val_ece']: an objective is "
        "named twice",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT)
def test_bad_input_is_one_line_before_any_work(overrides, message, tmp_path, monkeypatch, capsys):
    port = free_port()  # nothing listens there
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", *DIGITS, *(item.format(port=port) for item in overrides)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(port=port)), err
    assert err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written: no outputs, no state, no store


def test_an_unreachable_ray_address_from_the_environment_is_named(tmp_path, monkeypatch, capsys):
    port = free_port()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(SystemExit):
        cli.main(["tune", *DIGITS, "search=l2_strength"])
    err = capsys.readouterr().err
    assert err.startswith(f"error: RAY_ADDRESS='127.0.0.1:{port}': no Ray head answers there")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_fails_before_ray_or_tensorflow_is_imported(tmp_path):
    code = (
        "import sys\nfrom reglab import cli\n"
        "try:\n    cli.main(['tune', 'search=l2_strength', 'tune.n_trials=0'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, sorted(m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
    assert result.stderr.strip() == "error: tune.n_trials=0: must be >= 1"


def test_an_unknown_search_in_the_pipeline_config_is_refused():
    with pytest.raises(ConfigError, match=r"search='nope': unknown"):
        config_for("searches=[nope]")


def test_the_stage_refuses_a_search_not_in_the_config(tmp_path):
    from reglab.config.compose import compose, to_yaml

    (tmp_path / "params.yaml").write_text(to_yaml(compose(DIGITS)))
    result = subprocess.run(
        [sys.executable, "-m", "reglab.stages.tune", "nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: search='nope': unknown"), result.stderr
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    # Only the check's record of a valid params.yaml (reglab.config.compose), no search output.
    assert written - {".reglab/params-validated.pickle", ".reglab/params-fresh"} == {"params.yaml"}


def test_every_search_key_is_logged_nowhere_in_a_variant_run():
    """A variant run's params are its own training's: the searches do not change them."""
    from reglab.config.schema import pipeline_key, run_params

    plain = config_for()
    searching = config_for("searches=[l2_strength]", "tune.max_concurrent=4")
    assert run_params(plain, "l2", 42) == run_params(searching, "l2", 42)
    assert pipeline_key(plain, "c") == pipeline_key(searching, "c")
    assert not {"searches", "search_spaces", "tune"} & set(run_params(plain, "l2", 42))
    json.dumps(run_params(plain, "l2", 42), default=str)


def test_only_parallel_trials_on_sqlite_are_served_through_a_tracking_server():
    from reglab.tune.search import serves_store

    def served(*overrides: str) -> bool:
        config = config_for(*overrides)
        return serves_store(config.search("l2_strength"), config.tune)

    assert served("tune.max_concurrent=2")
    assert not served("tune.max_concurrent=1")  # one writer at a time
    assert not served("tune.max_concurrent=4", "tune.n_trials=1")
    assert not served("tune.max_concurrent=4", "tune.tracking_server=false")


@pytest.mark.parametrize(
    ("address", "quoted"),
    [(None, True), ("127.0.0.1:6379", True), ("localhost:6379", True), ("10.1.2.3:6379", False)],
)
def test_a_search_quotes_its_interpreter_for_ray_workers_on_this_machine(
    monkeypatch, address, quoted
):
    """Ray runs a job's workers as `bash -c "exec <py_executable> ..."`: a venv in a
    folder with a space gets its path quoted where the workers run it (a local instance,
    a head on the loopback); a remote cluster's nodes keep their own interpreter."""
    from reglab.tune.engine import _runtime_env

    config = config_for()
    monkeypatch.setattr(sys, "executable", "/home/me/my proj/.venv/bin/python")
    runtime_env = _runtime_env(config, "sqlite:///mlflow.db", address=address)
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "sqlite:///mlflow.db"
    expected = "'/home/me/my proj/.venv/bin/python'" if quoted else None
    assert runtime_env.get("py_executable") == expected
    monkeypatch.setattr(sys, "executable", "/home/me/proj/.venv/bin/python")
    assert "py_executable" not in _runtime_env(config, "sqlite:///mlflow.db", address=address)


def test_a_reused_worker_waits_for_a_stopped_trial_as_long_as_its_ending_can_take():
    """Ray fails a worker's next trial if the stopped one's thread has not ended within
    TUNE_FUNCTION_THREAD_TIMEOUT_S; ending it makes up to 4 tracking requests, each
    bounded by tracking.server_wait_s, plus a minute for a starved CPU."""
    from reglab.tune.engine import _runtime_env

    waits = {}
    for server_wait in (30, 5):
        config = config_for(f"tracking.server_wait_s={server_wait}")
        env = _runtime_env(config, "http://127.0.0.1:5000")["env_vars"]
        waits[server_wait] = env["TUNE_FUNCTION_THREAD_TIMEOUT_S"]
    assert waits == {30: "180", 5: "80"}


def test_a_stored_search_is_reused_only_for_the_same_space_data_trials_and_store():
    """Another store or another number of trials is another search: starting fresh names
    what changed (a search resumed into another store would report trials whose runs
    are not in the store the user named)."""
    import json

    from reglab.tune.search import changed_parts, fingerprint

    config = config_for()
    stored = json.dumps(fingerprint(config, "l2_strength", "sqlite:////a/mlflow.db"))
    same = fingerprint(config_for(), "l2_strength", "sqlite:////a/mlflow.db")
    assert changed_parts(stored, same) == []
    other_store = fingerprint(config, "l2_strength", "sqlite:////b/other.db")
    assert changed_parts(stored, other_store) == ["tracking store"]
    fewer = fingerprint(config_for("tune.n_trials=6"), "l2_strength", "sqlite:////a/mlflow.db")
    assert changed_parts(stored, fewer) == ["trial settings"]
    longer = fingerprint(
        config_for("search_spaces.l2_strength.epochs=5"), "l2_strength", "sqlite:////a/mlflow.db"
    )
    assert changed_parts(stored, longer) == ["space"]
    assert changed_parts("0123abcd", same) == list(same)  # a stamp of an older version


def test_a_search_keeps_ray_and_optuna_notices_out_unless_debug(monkeypatch):
    import logging

    import optuna

    from reglab import stages

    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    monkeypatch.setattr(token, "level", logging.NOTSET)
    monkeypatch.setenv("REGLAB_LOG_LEVEL", "DEBUG")
    stages.quiet_search_libraries()
    assert token.level == logging.NOTSET  # DEBUG: every line shows
    monkeypatch.delenv("REGLAB_LOG_LEVEL")
    before = optuna.logging.get_verbosity()
    try:
        stages.quiet_search_libraries()
        assert not token.isEnabledFor(logging.WARNING) and token.isEnabledFor(logging.ERROR)
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
        assert logging.getLogger("optuna").isEnabledFor(logging.WARNING)  # real warnings
    finally:
        optuna.logging.set_verbosity(before)
