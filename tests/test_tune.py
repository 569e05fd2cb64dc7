"""Searches for real, on a two-node Ray cluster started here on 127.0.0.1.

One cluster for the module (a Ray start costs seconds): a head and a second
node joined to it by address, one CPU each, stopped in finalizers by process id
even when a test fails (tests/ray_nodes.py). Each test is its own project folder
with digits. The search in the pipeline (`dvc exp run`) is in
test_tune_pipeline.py, on its own head: with `make test`'s two workers it runs
beside this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DIGITS
from tests.ray_nodes import BIN, RayNode, base_env, client, make_project, read_trials, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(request):
    """A head and a second node joined to it by address, one CPU each."""
    head = RayNode(num_cpus=1)
    request.addfinalizer(head.stop)
    worker = RayNode(num_cpus=1, join=head.address)
    request.addfinalizer(worker.stop)
    # `ray start` says so once the head's GCS lists the new node (it waits for that
    # itself): no driver of ours needs to connect to count the nodes.
    assert worker.started.wait(120), "".join(worker.output)
    assert worker.process.poll() is None, "".join(worker.output)
    return head


# A user's model, in the project folder only: Ray ships it to the trials on both nodes.
USER_MODULE = """
import keras
from keras import layers


def digits_net(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(inputs)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="scores")(x), name="digits_net")
"""


def test_reglab_tune_by_address_four_concurrent_trials_tracked_and_best_tested(
    cluster, data_dir, tmp_path
):
    root = make_project(tmp_path / "project", [], data_dir)
    (root / "usermodels").mkdir()
    (root / "usermodels" / "__init__.py").write_text("")
    (root / "usermodels" / "nets.py").write_text(USER_MODULE)
    result = run(
        [
            str(BIN / "reglab"),
            "tune",
            *DIGITS,
            "model=keras",
            "model.builder=usermodels.nets.digits_net",
            "model.source=usermodels",
            "search=l2_strength",
            f"tune.address={cluster.address}",
            # Four trials at once (half a CPU each): four processes writing to the store.
            "tune.n_trials=4",
            "tune.max_concurrent=4",
            "tune.cpus_per_trial=0.5",
            "search_spaces.l2_strength.epochs=2",
            "train.epochs=2",
        ],  # fmt: skip
        root,
        base_env(),
    )
    assert "database is locked" not in result.stdout + result.stderr
    assert "A new study created" not in result.stdout + result.stderr  # Optuna's, not ours
    assert "View run" not in result.stdout + result.stderr  # MLflow's, when a run ends
    # Parallel trials on sqlite: the search served the store through its own server.
    assert "trials log through a tracking server" in result.stdout + result.stderr
    out = root / "outputs/tune/l2_strength"
    trials = read_trials(out / "trials.csv")
    assert [int(t["trial"]) for t in trials] == [0, 1, 2, 3]
    assert {t["state"] for t in trials} <= {"completed", "pruned"}
    completed = [t for t in trials if t["state"] == "completed"]
    assert completed and all(t["epochs"] == "2" for t in completed)
    best = yaml.safe_load((out / "best.yaml").read_text())
    # The finalists (tiny: 2), trained again under seed 43: the best completed trials,
    # then the pruned ones that trained the most epochs. The best is the best mean
    # over the seeds each was trained to the end under, not the single best trial.
    by_objective = sorted(completed, key=lambda t: float(t["objective"]))
    pruned = sorted(
        (t for t in trials if t["state"] == "pruned"),
        key=lambda t: (-int(t["epochs"]), float(t["objective"]), int(t["trial"])),
    )
    finalists = best["finalists"]
    expected_finalists = {int(t["trial"]) for t in [*by_objective, *pruned][:2]}
    assert {f["trial"] for f in finalists} == expected_finalists
    assert best["single_best_trial"] == int(by_objective[0]["trial"])
    trial_by_number = {int(t["trial"]): t for t in trials}
    for finalist in finalists:
        state = trial_by_number[finalist["trial"]]["state"]
        assert finalist["trial_state"] == state
        # A pruned finalist is scored on its repeat alone (its own seed stopped early).
        assert finalist["seeds"] == ([42, 43] if state == "completed" else [43])
        if state == "completed":
            own = float(trial_by_number[finalist["trial"]]["objective"])
            assert finalist["values"][0] == pytest.approx(own, rel=1e-12)
        mean = sum(finalist["values"]) / len(finalist["values"])
        assert finalist["mean"] == pytest.approx(mean, rel=1e-12)
    assert [f["mean"] for f in finalists] == sorted(f["mean"] for f in finalists)
    top = trial_by_number[best["trial"]]
    assert best["trial"] == finalists[0]["trial"]
    assert best["params"] == {"kernel.l2": float(top["kernel.l2"])} == finalists[0]["params"]
    assert best["value"] == finalists[0]["mean"] and best["values"] == finalists[0]["values"]
    if len(finalists) == 2 and all(f["trial_state"] == "completed" for f in finalists):
        assert best["runner_up"] == finalists[1]
        difference = finalists[1]["mean"] - finalists[0]["mean"]
        assert best["difference"]["runner_up_minus_best"] == pytest.approx(difference)
        assert best["difference"]["test"] == "paired" and best["difference"]["seeds"] == 2
    assert 1e-6 <= best["params"]["kernel.l2"] <= 1e-1
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert {"objective_vs_kernel.l2.png", "optimization_history.png"} <= set(figures)
    assert {"optuna_history.png", "optuna_intermediate.png", "optuna_slice.png"} <= set(figures)
    import optuna

    study = optuna.load_study(study_name="l2_strength", storage=f"sqlite:///{out}/study.db")
    assert len(study.trials) == 4
    stored = {t.number: t for t in study.trials}
    for trial in trials:
        assert (
            stored[int(trial["trial"])].state.name
            == ({"completed": "COMPLETE", "pruned": "PRUNED"}[trial["state"]])
        )
        assert len(stored[int(trial["trial"])].intermediate_values) == int(trial["epochs"])

    mlflow_client = client(root)
    experiment = mlflow_client.get_experiment_by_name("reglab")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("reglab.kind") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["n_trials"] == "4"
    assert parent.data.params["sampler"] == "optuna.TPESampler"
    assert parent.data.params["sampler_seed"] == "0"
    assert parent.data.params["space.kernel.l2"] == "log-uniform [1e-06, 0.1]"
    assert float(parent.data.params["best.kernel.l2"]) == best["params"]["kernel.l2"]
    assert parent.data.metrics["best_val_data_loss"] == pytest.approx(best["value"])
    # The search's outputs, Optuna's figures among them, are its run's artifacts too.
    logged = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id)}
    assert {"best.yaml", "trials.csv", "study.db", "figures"} <= logged
    logged_figures = mlflow_client.list_artifacts(parent.info.run_id, "figures")
    assert {Path(a.path).name for a in logged_figures} == set(figures)
    # Where the time went: the trials' epochs, summed, and each trial's start latency.
    trained = sum(float(t["epoch_seconds"]) for t in trials)
    assert 0 < trained < parent.data.metrics["epoch_seconds_total"]  # + the repeats'
    assert all(0 < float(t["start_latency_s"]) < 120 for t in trials)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 4
    # Trials wrote to the store at the same time: some moment lies inside several
    # runs. (All four slots are free at once, but on a loaded machine Ray has been
    # seen to start the fourth trial's process 60 ms after the first trial ended.)
    spans = [(r.info.start_time, r.info.end_time) for r in nested]
    assert max(sum(start <= t < end for start, end in spans) for t, _ in spans) >= 2
    by_run = {t["run_id"]: t for t in trials}
    assert set(by_run) == {r.info.run_id for r in nested}
    for trial_run in nested:
        trial = by_run[trial_run.info.run_id]
        tags = trial_run.data.tags
        assert tags["reglab.trial_state"] == trial["state"]
        assert tags["reglab.best_trial"] == str(trial is top).lower()
        assert tags["reglab.trial_id"] == trial["trial_id"]
        # A pruned trial is a normal outcome: its run ends FINISHED when it is stopped.
        assert trial_run.info.status == "FINISHED"
        assert float(trial_run.data.params["regularizer.kernel.l2"]) == float(trial["kernel.l2"])
        assert trial_run.data.params["train.epochs"] == "2"
        assert trial_run.data.params["model.builder"] == "usermodels.nets.digits_net"
        # Nothing lost: every epoch of every trial, each metric a variant run has.
        history = mlflow_client.get_metric_history(trial_run.info.run_id, "val/data_loss")
        assert sorted(m.step for m in history) == list(range(1, int(trial["epochs"]) + 1))
        # Scored as the final model is kept (no early stopping here: the last epoch).
        last = max(history, key=lambda m: m.step)
        assert last.value == pytest.approx(float(trial["objective"]))
        if trial["state"] == "pruned":
            # Ended when it was stopped, not when the search ended.
            assert trial_run.info.end_time - last.timestamp < 15_000
            assert trial_run.info.end_time < parent.info.end_time - 1_000
        sparsity = [key for key in trial_run.data.metrics if key.endswith("/sparsity")]
        assert sparsity and all(key.startswith("weights/") for key in sparsity)
        for key in ("train/data_loss", "train/penalty", "val/accuracy", *sparsity):
            steps = sorted(
                m.step for m in mlflow_client.get_metric_history(trial_run.info.run_id, key)
            )
            assert steps == sorted(m.step for m in history), key
        # Trials see train and validation only: their data folder holds no test array.
        contexts = {
            tag.value
            for dataset in trial_run.inputs.dataset_inputs
            for tag in dataset.tags
            if tag.key == "mlflow.data.context"
        }
        assert contexts == {"training", "validation"}
        # A trial that trained to the end logs its histograms' counts (even one ASHA
        # stopped at its last epoch: that report waits for its final logging), not
        # their images or a served model: those are the `_best` variant's (below). A
        # pruned one stopped before its end.
        weights = {a.path for a in mlflow_client.list_artifacts(trial_run.info.run_id, "weights")}
        assert weights == ({"weights/histograms.json"} if trial["state"] == "completed" else set())
        assert "model" not in {a.path for a in mlflow_client.list_artifacts(trial_run.info.run_id)}
    # Each repeat: a run nested under its trial's run, tagged, under seed 43, scored alike.
    for finalist in finalists:
        trial_run_id = trial_by_number[finalist["trial"]]["run_id"]
        repeats = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial_run_id]
        assert len(repeats) == 1
        repeat = repeats[0]
        assert repeat.data.tags["reglab.kind"] == "repeat"
        assert repeat.data.tags["reglab.repeat_of_trial"] == str(finalist["trial"])
        assert repeat.data.tags["seed"] == "43" and repeat.info.status == "FINISHED"
        history = mlflow_client.get_metric_history(repeat.info.run_id, "val/data_loss")
        last = max(history, key=lambda m: m.step)
        assert last.step == 2 and last.value == pytest.approx(finalist["values"][-1])
    assert parent.data.metrics["repeats"] == len(finalists)
    trial_data = root / ".reglab/tune/l2_strength/trials/data"
    assert sorted(path.name for path in trial_data.iterdir()) == [
        "manifest.json", "train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy",
    ]  # fmt: skip

    # <search>_best: the base recipe with the best parameters, trained, then tested once.
    report = json.loads((root / "outputs/tune/eval/l2_strength_best@42.json").read_text())
    assert 0.1 < report["test_accuracy"] <= 1.0
    run_json = json.loads((root / ".reglab/runs/tune/l2_strength_best@42.json").read_text())
    best_run = mlflow_client.get_run(run_json["mlflow_run_id"])
    assert best_run.info.run_name == "l2_strength_best@42" and best_run.info.status == "FINISHED"
    assert float(best_run.data.params["regularizer.kernel.l2"]) == best["params"]["kernel.l2"]
    assert best_run.data.params["train.epochs"] == "2"
    assert best_run.data.metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])
    best_weights = mlflow_client.list_artifacts(best_run.info.run_id, "weights")
    assert "weights/histograms_final.png" in {a.path for a in best_weights}
    # The recipe landed on the user's layers: the hidden Dense, not the output.
    summary = Path(mlflow_client.download_artifacts(best_run.info.run_id, "model_summary.txt"))
    rows = {line.split()[0]: line for line in summary.read_text().splitlines() if line.strip()}
    assert "L2(l2=" in rows["hidden"] and "L2" not in rows["scores"]


def test_a_search_with_two_objectives_trains_every_trial_and_gives_the_pareto_front(
    cluster, data_dir, tmp_path
):
    """objective: [val_data_loss, sparsity] on the L1 strength: Optuna's multi-objective
    TPE, every trial to its last epoch (no ASHA), no repeats; the front in best.yaml is
    the one found by hand from trials.csv, each value the trial's last epoch's."""
    root = make_project(tmp_path / "project", [], data_dir)
    result = run(
        [
            str(BIN / "reglab"),
            "tune",
            *DIGITS,
            "search=l1_strength",
            "search_spaces.l1_strength.objective=[val_data_loss,sparsity]",
            f"tune.address={cluster.address}",
            "tune.n_trials=4",
            "train.epochs=2",
        ],
        root,
        base_env(),
    )
    assert "no finalist is repeated; the answer is the Pareto front" in result.stderr
    out = root / "outputs/tune/l1_strength"
    trials = read_trials(out / "trials.csv")
    assert [(t["state"], t["epochs"]) for t in trials] == [("completed", "2")] * 4
    points = {int(t["trial"]): (float(t["val_data_loss"]), float(t["sparsity"])) for t in trials}
    mlflow_client = client(root)
    for trial in trials:
        # Each objective is the trial's last epoch's (no early stopping), as its run has it.
        loss, sparsity = points[int(trial["trial"])]
        last = {
            key: max(mlflow_client.get_metric_history(trial["run_id"], key), key=lambda m: m.step)
            for key in ("val/data_loss", "weights/sparsity", "val/ece")
        }
        assert {m.step for m in last.values()} == {2}
        assert last["val/data_loss"].value == pytest.approx(loss, rel=1e-6)
        assert last["weights/sparsity"].value == pytest.approx(sparsity, rel=1e-6)
        assert float(trial["objective"]) == loss

    def beaten(i: int) -> bool:
        (loss, sparsity) = points[i]
        return any(
            other_loss <= loss and other_sparsity >= sparsity and points[j] != points[i]
            for j, (other_loss, other_sparsity) in points.items()
        )

    front = sorted((i for i in points if not beaten(i)), key=lambda i: (points[i][0], i))
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert [entry["trial"] for entry in best["pareto_front"]] == front
    for entry in best["pareto_front"]:
        loss, sparsity = points[entry["trial"]]
        assert entry["values"] == {"val_data_loss": loss, "sparsity": sparsity}
        assert entry["params"] == {"kernel.l1": float(trials[entry["trial"]]["kernel.l1"])}
    assert best["trial"] == front[0] and best["value"] == points[front[0]][0]
    assert best["objective"] == ["val_data_loss", "sparsity"]
    assert [(f["trial"], f["seeds"]) for f in best["finalists"]] == [(front[0], [42])]
    assert "optuna_pareto_front.png" in {path.name for path in (out / "figures").iterdir()}

    experiment = mlflow_client.get_experiment_by_name("reglab")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("reglab.kind") == "search"]
    assert (parent.data.params["objective"], parent.data.params["mode"]) == (
        "val_data_loss,sparsity",
        "min,max",
    )
    assert parent.data.params["scheduler"] == "FIFO"
    assert parent.data.metrics["pareto_front_size"] == len(front)
    assert parent.data.metrics["best_sparsity"] == points[front[0]][1]
    assert not [r for r in runs if r.data.tags.get("reglab.kind") == "repeat"]
    on_front = {
        r.data.tags["reglab.trial_id"]: r.data.tags["reglab.pareto_front"]
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert on_front == {t["trial_id"]: str(int(t["trial"]) in front).lower() for t in trials}
    # The `_best` variant, the front's best by the first objective, trained and tested.
    report = json.loads((root / "outputs/tune/eval/l1_strength_best@42.json").read_text())
    assert 0.1 < report["test_accuracy"] <= 1.0


def tune_stage(root: Path, address: str) -> subprocess.Popen:
    """The pipeline's `tune@l2_strength` (python -m reglab.stages.tune), by RAY_ADDRESS."""
    return subprocess.Popen(
        [sys.executable, "-m", "reglab.stages.tune", "l2_strength"],
        cwd=root,
        env=base_env(RAY_ADDRESS=address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-6000:]
    return output


def _a_trial_finished(state: Path) -> bool:
    """A trial trained and logged to the end: its run.json written, its checkpoint cleared.
    Ray saves its experiment state every 10 s or so: at this moment it most likely
    still holds that trial as running, and the trials after it as not yet made."""
    trials = state / "trials"
    return any(
        not (trials / "checkpoints" / summary.parent.name).exists()
        for summary in trials.glob("models/*/run.json")
    )


def _worker_pids(state: Path, trial_id: str) -> set[int]:
    """The processes that reported a trial's results (Ray records each result's pid)."""
    (folder,) = state.glob(f"ray-*/run_trial_{trial_id}_*")
    lines = (folder / "result.json").read_text().splitlines()
    return {json.loads(line)["pid"] for line in lines if line.strip()}


def _ray_trial_ids(state: Path) -> set[str]:
    """The trial ids in a search's Ray experiment folder (run_trial_<id>_<number>_...)."""
    from reglab.tune.trial import trial_dir

    return {trial_dir(str(path))[0] for path in state.glob("ray-*/run_trial_*")}


def test_a_search_killed_with_sigkill_resumes_to_the_uninterrupted_best(
    cluster, data_dir, tmp_path
):
    """Serial (max_concurrent=1): the same seed gives the same trials. The uninterrupted
    search and the one to be killed run side by side, one node each."""
    serial = [
        "tune.max_concurrent=1",
        # Three trials: the first finishes before the kill, the others run after it
        # (in the uninterrupted search, one after a pruned trial, in that one's worker).
        "tune.n_trials=3",
        "search_spaces.l2_strength.epochs=2",
    ]
    reference = make_project(tmp_path / "reference", serial, data_dir)
    root = make_project(tmp_path / "killed", serial, data_dir)
    uninterrupted = tune_stage(reference, cluster.address)
    killed = tune_stage(root, cluster.address)
    state = root / ".reglab/tune/l2_strength"
    deadline = time.monotonic() + 600
    while not _a_trial_finished(state) and killed.poll() is None:
        assert time.monotonic() < deadline, "no trial finished in 600 s"
        time.sleep(0.1)
    assert killed.poll() is None, "the search ended before it could be killed"
    # The driver (serial: no tracking server; one would be stopped by the next start).
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (root / "reports/tune/l2_strength/best.yaml").exists()
    # Resumed at once, beside the uninterrupted search's last trial (one node each).
    resuming = tune_stage(root, cluster.address)
    finish(uninterrupted)
    resumed = finish(resuming)
    assert "resuming the stored search" in resumed
    # One trial at a time: the trials wrote the sqlite file themselves, no server.
    assert "tracking server" not in resumed
    trials = read_trials(root / "reports/tune/l2_strength/trials.csv")
    expected = read_trials(reference / "reports/tune/l2_strength/trials.csv")
    assert len(trials) == 3
    assert [t["kernel.l2"] for t in trials] == [t["kernel.l2"] for t in expected]
    assert [t["state"] for t in trials] == [t["state"] for t in expected]
    best = yaml.safe_load((root / "reports/tune/l2_strength/best.yaml").read_text())
    reference_best = yaml.safe_load((reference / "reports/tune/l2_strength/best.yaml").read_text())
    assert best["params"] == reference_best["params"]
    assert best["value"] == pytest.approx(reference_best["value"], rel=1e-6)
    # The finished trial was not trained again: one MLflow run per trial, one parent.
    mlflow_client = client(root)
    experiment = mlflow_client.get_experiment_by_name("reglab")
    trial_runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string="tags.`reglab.trial_id` != ''"
    )
    assert len(trial_runs) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {
        trials_parent := trial_runs[0].data.tags["mlflow.parentRunId"]
    }
    assert mlflow_client.get_run(trials_parent).info.status == "FINISHED"
    # A trial's numbers do not depend on the trials its worker ran before it. The
    # uninterrupted search's later trials ran in the worker of its first (Ray reuses
    # it, a pruned trial's too: TensorFlow already imported, each started in a fraction
    # of the first's time); the resumed search's ran in a new worker. Their histories
    # are the same.
    workers = [
        _worker_pids(reference / ".reglab/tune/l2_strength", t["trial_id"]) for t in expected
    ]
    assert all(len(pids) == 1 for pids in workers) and len(set().union(*workers)) == 1, workers
    assert any(t["state"] == "pruned" for t in expected[:-1]), expected
    reference_client = client(reference)
    for ours, theirs in zip(trials, expected, strict=True):
        histories = [
            [
                (m.step, m.value)
                for m in sorted(
                    store.get_metric_history(run, "val/data_loss"), key=lambda m: m.step
                )
            ]
            for store, run in (
                (mlflow_client, ours["run_id"]),
                (reference_client, theirs["run_id"]),
            )
        ]
        assert histories[0] and histories[0] == histories[1], ours["trial"]
    first, *later = (float(t["start_latency_s"]) for t in expected)
    assert all(value < first / 2 for value in later), (first, later)
    # Each search's Ray folder holds its own trials only (both ran on one cluster).
    reference_ids = _ray_trial_ids(reference / ".reglab/tune/l2_strength")
    assert reference_ids == {t["trial_id"] for t in expected}
    assert {t["trial_id"] for t in trials} <= _ray_trial_ids(state)
    assert not reference_ids & _ray_trial_ids(state)
