"""Searches for real, on a two-node Ray cluster started here on 127.0.0.1.

One cluster for the module (a Ray start costs seconds): a head and a second
node joined to it by address, one CPU each, stopped in finalizers by process id
even when a test fails. Each test is its own project folder with digits.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DIGITS

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",
        TF_CPP_MIN_LOG_LEVEL="2",
        RAY_USAGE_STATS_ENABLED="0",
        # A test cluster without Ray's token authentication: it listens on 127.0.0.1 only.
        RAY_AUTH_MODE="disabled",
    )
    env.update(extra)
    return env


class RayNode:
    """`ray start --block`, in its own session: a head, or a node joining ``join``."""

    def __init__(self, num_cpus: int = 1, join: str | None = None):
        self.port = free_port()
        self.address = join or f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: socket paths
        where = [f"--address={join}"] if join else ["--head", f"--port={self.port}"]
        command = [str(BIN / "ray"), "start", "--block", *where, f"--num-cpus={num_cpus}"]
        command += ["--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}"]
        if not join:
            command += ["--include-dashboard=false"]
        self.process = subprocess.Popen(
            command,
            env=base_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while join is None and not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError("ray start failed:\n" + "".join(self.output))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Ray head did not answer within 120 s")
            time.sleep(0.5)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if "Ray runtime started" in line:
                self.started.set()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops its daemons), then SIGKILL, by process id,
        to whatever of its tree is left."""
        import psutil

        tree = []
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


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


def make_project(root: Path, overrides: list[str], data: Path) -> Path:
    """A project folder: params.yaml for digits with ``overrides``, the prepared data copied."""
    from reglab.compose import compose, to_yaml

    root.mkdir(parents=True)
    (root / "params.yaml").write_text(to_yaml(compose(DIGITS + overrides)))
    shutil.copytree(data, root / "data", symlinks=True)
    return root


def run(command: list[str], root: Path, env: dict, timeout: float = 900):
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def read_trials(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_reglab_tune_by_address_four_concurrent_trials_tracked_and_best_tested(
    cluster, data_dir, tmp_path
):
    root = make_project(tmp_path / "project", [], data_dir)
    result = run(
        [
            str(BIN / "reglab"),
            "tune",
            *DIGITS,
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
    out = root / "outputs/tune/l2_strength"
    trials = read_trials(out / "trials.csv")
    assert [int(t["trial"]) for t in trials] == [0, 1, 2, 3]
    assert {t["state"] for t in trials} <= {"completed", "pruned"}
    completed = [t for t in trials if t["state"] == "completed"]
    assert completed and all(t["epochs"] == "2" for t in completed)
    top = min(completed, key=lambda t: float(t["objective"]))
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["params"] == {"kernel.l2": float(top["kernel.l2"])}
    assert best["value"] == pytest.approx(float(top["objective"]), rel=1e-12)
    assert 1e-6 <= best["params"]["kernel.l2"] <= 1e-1
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["objective_vs_kernel.l2.png", "optimization_history.png"]

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
        expected_status = {"completed": "FINISHED", "pruned": "KILLED"}[trial["state"]]
        assert trial_run.info.status == expected_status
        assert float(trial_run.data.params["regularizer.kernel.l2"]) == float(trial["kernel.l2"])
        assert trial_run.data.params["train.epochs"] == "2"
        # Nothing lost: every epoch of every trial, each metric a variant run has.
        history = mlflow_client.get_metric_history(trial_run.info.run_id, "val/data_loss")
        assert sorted(m.step for m in history) == list(range(1, int(trial["epochs"]) + 1))
        assert min(m.value for m in history) == pytest.approx(float(trial["objective"]))
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
    trial_data = root / ".reglab/tune/l2_strength/trials/data"
    assert sorted(path.name for path in trial_data.iterdir()) == [
        "manifest.json", "train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy",
    ]  # fmt: skip

    # <search>_best: the base recipe with the best parameters, trained, then tested once.
    report = json.loads((root / "outputs/tune/eval/l2_strength_best@42.json").read_text())
    assert 0.1 < report["test_accuracy"] <= 1.0
    run_json = json.loads((root / "outputs/tune/models/l2_strength_best@42/run.json").read_text())
    best_run = mlflow_client.get_run(run_json["mlflow_run_id"])
    assert best_run.info.run_name == "l2_strength_best@42" and best_run.info.status == "FINISHED"
    assert float(best_run.data.params["regularizer.kernel.l2"]) == best["params"]["kernel.l2"]
    assert best_run.data.params["train.epochs"] == "2"
    assert best_run.data.metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])


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


def _ray_trial_ids(state: Path) -> set[str]:
    """The trial ids in a search's Ray experiment folder (run_trial_<id>_<number>_...)."""
    return {path.name.split("_")[2] for path in state.glob("ray-*/run_trial_*")}


def test_a_search_killed_with_sigkill_resumes_to_the_uninterrupted_best(
    cluster, data_dir, tmp_path
):
    """Serial (max_concurrent=1): the same seed gives the same trials. The uninterrupted
    search and the one to be killed run side by side, one node each."""
    serial = [
        "tune.max_concurrent=1",
        # Two trials: the first finishes before the kill, the second runs after it.
        "tune.n_trials=2",
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
    os.killpg(killed.pid, signal.SIGKILL)  # the driver, and its tracking server with it
    killed.wait()
    assert not (root / "reports/tune/l2_strength/best.yaml").exists()
    # Resumed at once, beside the uninterrupted search's last trial (one node each).
    resuming = tune_stage(root, cluster.address)
    finish(uninterrupted)
    resumed = finish(resuming)
    assert "resuming the stored search" in resumed
    trials = read_trials(root / "reports/tune/l2_strength/trials.csv")
    expected = read_trials(reference / "reports/tune/l2_strength/trials.csv")
    assert len(trials) == 2
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
    assert len(trial_runs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {
        trials_parent := trial_runs[0].data.tags["mlflow.parentRunId"]
    }
    assert mlflow_client.get_run(trials_parent).info.status == "FINISHED"
    # Each search's Ray folder holds its own trials only (both ran on one cluster).
    reference_ids = _ray_trial_ids(reference / ".reglab/tune/l2_strength")
    assert reference_ids == {t["trial_id"] for t in expected}
    assert {t["trial_id"] for t in trials} <= _ray_trial_ids(state)
    assert not reference_ids & _ray_trial_ids(state)


def test_dvc_exp_run_with_a_search_trains_and_tests_its_best(cluster, tmp_path):
    """The search is a grid sweep (`tune.sampler: grid`, a multirun on Ray) of two
    points: kernel.l2 = 1e38 overflows the penalty (the loss is not finite in the
    first epoch), so that trial fails; the search goes on, and its best is trained
    and tested."""
    from bench.workspace import copy_project
    from tests.test_pipeline_e2e import stages_run

    root = tmp_path / "project"
    copy_project(
        root,
        files={
            "conf/variants/e2e_tune.yaml": (
                "# @package variants\ndefaults:\n  - /regularizer@baseline: none\n"
            ),
            "conf/experiment/e2e_tune.yaml": (
                "# @package _global_\ndefaults:\n  - tiny\n  - override /data: digits\n"
                "  - override /variants: e2e_tune\n"
                "model: {padding: same}\n"
                "train: {epochs: 2, batch_size: 64, train_probe_size: 200}\n"
                "tune: {sampler: grid}\n"
                "search_spaces:\n  l2_strength:\n    epochs: 1\n"
                "    params: [{key: kernel.l2, choices: [1.0e-4, 1.0e+38]}]\n"
            ),
        },
        overrides=["experiment=e2e_tune"],
    )
    config = (root / "conf/config.yaml").read_text()
    (root / "conf/config.yaml").write_text(
        config.replace("  - experiment: null", "  - experiment: e2e_tune")
    )
    env = base_env(RAY_ADDRESS=cluster.address)
    run(["git", "commit", "-qam", "e2e_tune", "--author", "t <t@t>"], root, env)
    first = run(["dvc", "exp", "run", "-S", "searches=[l2_strength]"], root, env)
    assert stages_run(first.stdout) >= {
        "tune@l2_strength",
        "train_best@l2_strength-42",
        "train@baseline-42",
        "compare",
    }, first.stdout
    trials = read_trials(root / "reports/tune/l2_strength/trials.csv")
    states = {float(t["kernel.l2"]): (t["state"], t["objective"], t["epochs"]) for t in trials}
    assert len(trials) == 2 and set(states) == {1e-4, 1e38}
    assert states[1e38] == ("failed", "", "0")
    assert states[1e-4][0] == "completed" and states[1e-4][2] == "1"
    assert math.isfinite(float(states[1e-4][1]))
    best = yaml.safe_load((root / "reports/tune/l2_strength/best.yaml").read_text())
    assert best["params"] == {"kernel.l2": 1e-4}
    failed = next(t for t in trials if t["state"] == "failed")
    failed_run = client(root).get_run(failed["run_id"])
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.tags["reglab.trial_state"] == "failed"
    parent = client(root).get_run(failed_run.data.tags["mlflow.parentRunId"])
    assert parent.data.params["sampler"] == "optuna.GridSampler"
    assert parent.data.metrics["trials_failed"] == 1
    assert parent.data.metrics["trials_completed"] == 1
    run_json = json.loads((root / "models/l2_strength_best@42/run.json").read_text())
    assert run_json["variant"] == "l2_strength_best" and run_json["epochs_trained"] == 2
    best_run = client(root).get_run(run_json["mlflow_run_id"])
    assert float(best_run.data.params["regularizer.kernel.l2"]) == best["params"]["kernel.l2"]
    report = json.loads((root / "reports/eval/l2_strength_best@42.json").read_text())
    assert best_run.data.metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])
    leaderboard = (root / "reports/plots/leaderboard.csv").read_text()
    assert "l2_strength_best" in leaderboard and "baseline" in leaderboard
    assert "l2_strength_best" in (root / "reports/summary.md").read_text()
    plots = json.loads(run(["dvc", "plots", "show", "--json"], root, env).stdout)
    names = set(plots) if "data" not in plots else set(plots["data"])
    names = {name.replace(os.sep, "/") for name in names}
    assert "reports/tune/l2_strength/trials.csv" in names, names
    assert any("optimization_history.png" in name for name in names), names

    # What DVC would re-run after a change to the search (dvc status: no run needed):
    # its tune stage; a change to its base recipe adds its _best variant. Nothing else.
    def changed(*overrides: str) -> set[str]:
        from reglab.compose import compose, to_yaml
        from reglab.config import validate

        # `reglab compose` of the copy's conf/, in this process (a new one costs seconds).
        cfg = compose(["searches=[l2_strength]", *overrides], config_dir=root / "conf")
        validate(cfg)
        (root / "params.yaml").write_text(to_yaml(cfg))
        status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
        return set(status) - {"check"}  # its output is the same text for every valid config

    assert changed("search_spaces.l2_strength.seed=1") == {"tune@l2_strength"}
    assert changed("search_spaces.l2_strength.base.dropout.dense_rate=0.2") == {
        "tune@l2_strength",
        "train_best@l2_strength-42",
    }
