"""The team stack, for real, on 127.0.0.1: PostgreSQL, an S3-compatible store, `mlflow server`.

One stack for the module: a PostgreSQL cluster (initdb/pg_ctl), moto's S3 server
with a bucket for MLflow's artifacts and one for DVC, and `mlflow server` on
PostgreSQL with `--artifacts-destination s3://...` behind MLflow's basic-auth
app. The tiny pipeline runs on it with `dvc repro`; everything is checked from
the outside: rows in PostgreSQL, objects in the buckets, the model loaded
through the server. Then the DVC remote (push, a fresh clone pulls, nothing
re-runs; an experiment shared through a bare git repository), who may write,
and a search of everything logged for planted secrets. Four trainings log at once
to a fresh sqlite store, then to the server, where PostgreSQL restarts while
they log.

Two CPU cores go a long way when nothing waits for what it does not need:
PostgreSQL and moto start at the same time; while the MLflow server starts (its
imports and migrations take the longest) the team's project is prepared and its
data stages run (they do not log to MLflow), and the writers' project takes the
digits they made; the four trainings run beside the rest of `dvc repro` (one
stage at a time), so the restart hits the pipeline's stages too. The tests begin
once the restart is over; the DVC push, pull and experiment sharing then run in
the background while the checks of the server's rows, objects and model do.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import DIGITS, served_inputs
from tests.project_copy import (
    clean_env,
    compose_params,
    git_commit_all,
    git_init,
    run,
    select_experiment,
)
from tests.project_copy import copy_files as copy_project
from tests.services import (
    S3,
    S3_CREDENTIALS,
    Postgres,
    basic_auth_available,
    basic_auth_config,
    mlflow_server,
    postgres_cluster,
    s3_server,
)
from tests.test_pipeline_e2e import stages_run

pytestmark = pytest.mark.slow

VARIANTS = {"baseline": "none", "l2": "l2"}
EPOCHS = 2
ARTIFACTS_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "reglab-dvc"
ADMIN_PASSWORD = "admin-password-0001"
ALICE = ("alice", "planted-alice-password-42")
BOB = ("bob", "bob-password-000042")
PG_PASSWORD = "planted-pg-password-913"
# What must never reach the tracking store, an artifact or a log line.
PLANTED = [ALICE[1], PG_PASSWORD, *S3_CREDENTIALS.values()]
PLANTED.remove(S3_CREDENTIALS["AWS_DEFAULT_REGION"])


@dataclasses.dataclass
class Stack:
    pg: Postgres
    s3: S3
    uri: str
    auth: bool
    root: Path
    # Prepared while the server started: the team's project (configured, under git,
    # its data stages run) and the writers' (params and the same processed digits).
    team_project: Path
    writers_project: Path
    data_output: str  # of the team's `dvc repro preprocess`


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    import requests

    root = tmp_path_factory.mktemp("stack")
    # Every server is entered into `services` as soon as it runs, so it is stopped
    # whatever fails after it, in any thread.
    with contextlib.ExitStack() as services, ThreadPoolExecutor(1) as background:
        pg_started = background.submit(
            services.enter_context, postgres_cluster(password=PG_PASSWORD)
        )
        s3 = services.enter_context(s3_server([ARTIFACTS_BUCKET, DVC_BUCKET]))
        pg = pg_started.result()
        backend = pg.create_database("mlflow")
        env = {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
        auth = basic_auth_available()
        if auth:
            ini = basic_auth_config(
                root / "basic_auth.ini", pg.create_database("mlflow_auth"), ADMIN_PASSWORD
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "csrf-key-for-the-tests"
        server_started = background.submit(
            services.enter_context,
            mlflow_server(
                root / "server",
                backend,
                f"s3://{ARTIFACTS_BUCKET}",
                app_name="basic-auth" if auth else None,
                env=env,
            ),
        )
        team_project = prepare_team_project(tmp_path_factory.mktemp("team"), pg, s3)
        data_output = run_data_stages(team_project)
        writers_project = writers_project_from(team_project, tmp_path_factory.mktemp("writers"))
        server = server_started.result()
        if auth:
            for username, password in (ALICE, BOB):
                response = requests.post(
                    f"{server.uri}/api/2.0/mlflow/users/create",
                    json={"username": username, "password": password},
                    auth=("admin", ADMIN_PASSWORD),
                    timeout=60,
                )
                assert response.status_code == 200, response.text
        yield Stack(pg, s3, server.uri, auth, root, team_project, writers_project, data_output)


def client_env(stack: Stack, user: tuple[str, str] = ALICE) -> dict[str, str]:
    """What a workstation sets: the server, its user (with auth), S3 keys for DVC only."""
    env = clean_env(MLFLOW_TRACKING_URI=stack.uri, **S3_CREDENTIALS)
    if stack.auth:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = user
    # Bounded waits on a server that stops answering (see the README).
    env.update(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="5",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="30",
    )
    return env


@dataclasses.dataclass
class Pipeline:
    root: Path
    origin: Path
    env: dict[str, str]
    output: str
    run_ids: dict[str, str]
    # The DVC sharing, started in the background once the pipeline is done (each
    # one's test checks what it found): a Pushed and a SharedExperiment.
    pushed: Future = dataclasses.field(init=False)
    shared_experiment: Future = dataclasses.field(init=False)


def prepare_team_project(base: Path, pg: Postgres, s3: S3) -> Path:
    """The project as a team member sets it up: the experiment, the DVC remote, git."""
    root = copy_project(base / "project")
    # The config names the database directly (with its password); the workstation's
    # MLFLOW_TRACKING_URI wins over it, and the password must not be logged.
    select_experiment(
        root,
        "team",
        VARIANTS,
        overrides=["/data: digits"],
        settings=(
            f"model:\n  padding: same\ntrain:\n  epochs: {EPOCHS}\n"
            f"tracking:\n  log_model: true\n  uri: {pg.uri('mlflow')}\n"
        ),
    )
    env = clean_env()
    compose_params(root, env)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{DVC_BUCKET}/reglab"], root, env)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint_url], root, env)
    git_init(root, env)
    return root


def run_data_stages(root: Path) -> str:
    """`dvc repro preprocess`: check, download and preprocess, the stages that do not log
    to MLflow, so they run while the server starts (the DVC remote's keys are set, the
    server's address is not known yet)."""
    done = run(["dvc", "repro", "preprocess"], root, clean_env(**S3_CREDENTIALS))
    assert stages_run(done.stdout) == {"check", "download", "preprocess"}, done.stdout
    return done.stdout + done.stderr


def writers_project_from(team_project: Path, root: Path) -> Path:
    """The writers' project: their params, and the digits the team's preprocess stage
    made (the same data settings, so the very arrays that stage would make here)."""
    from reglab.config.compose import compose, to_yaml

    params = compose(DIGITS)
    team = yaml.safe_load((team_project / "params.yaml").read_text())
    assert team["data"] == params["data"] and team["paths"] == params["paths"]
    (root / "params.yaml").write_text(to_yaml(params))
    processed = params["paths"]["processed"]
    shutil.copytree(team_project / processed, root / processed)
    return root


@pytest.fixture(scope="module")
def pipeline(stack, writers_run, tmp_path_factory) -> Iterator[Pipeline]:
    """`dvc repro` on the stack while the four writers log; done once PostgreSQL's
    restart is over (no test sees it), not waiting for the writers to end. The DVC
    remote's push and pull and the experiment's sharing then go on in the background
    while the other tests run: first `dvc push`, then `dvc exp save` and `dvc exp
    push` (one `dvc` at a time in the repository), each clone's commands as soon as
    what it pulls is pushed."""
    root, base = stack.team_project, stack.team_project.parent
    env = client_env(stack)
    first = run(["dvc", "repro"], root, env)
    assert writers_run.restarted.wait(timeout=900), "PostgreSQL's restart never came"
    git_commit_all(root, env, "first run")
    origin = base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base, env)
    run(["git", "remote", "add", "origin", str(origin)], root, env)
    run(["git", "push", "-q", "origin", "main"], root, env)
    run_ids = {}
    for summary in root.glob(".reglab/runs/*.json"):
        content = json.loads(summary.read_text())
        run_ids[content["variant"]] = content["mlflow_run_id"]
    output = stack.data_output + first.stdout + first.stderr
    done = Pipeline(root, origin, env, output, run_ids)
    # Waited for (or failed) before the stack stops.
    pushed = threading.Event()  # `dvc push` is over: the repository is free
    with ThreadPoolExecutor(2) as background:
        done.pushed = background.submit(
            push_and_pull_in_a_fresh_clone, stack, done, pushed, tmp_path_factory.mktemp("clone")
        )
        done.shared_experiment = background.submit(
            share_an_experiment, done, pushed, tmp_path_factory.mktemp("teammate")
        )
        yield done


def test_runs_params_and_metric_histories_are_rows_in_postgresql(stack, pipeline):
    assert set(pipeline.run_ids) == set(VARIANTS)
    (experiment_id,) = stack.pg.query("SELECT experiment_id FROM experiments WHERE name = 'reglab'")
    for variant, run_id in pipeline.run_ids.items():
        ((name, status, experiment),) = stack.pg.query(
            "SELECT name, status, experiment_id FROM runs WHERE run_uuid = %s", (run_id,)
        )
        assert (name, status, experiment) == (f"{variant}@42", "FINISHED", experiment_id[0])
        params = dict(
            stack.pg.query("SELECT key, value FROM params WHERE run_uuid = %s", (run_id,))
        )
        assert params["variant"] == variant
        assert params["train.epochs"] == str(EPOCHS)
        assert params["data.name"] == "digits"
        # The workstation's MLFLOW_TRACKING_URI won over the config's database URI: the
        # run's params name the store it was logged to.
        assert params["tracking.uri"] == stack.uri
        steps = stack.pg.query(
            "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'val/data_loss' "
            "ORDER BY step",
            (run_id,),
        )
        # The same history as the stage's CSV, epoch by epoch.
        with (pipeline.root / f"reports/history/{variant}@42.csv").open() as handle:
            history = [float(row["val_data_loss"]) for row in csv.DictReader(handle)]
        assert [step for step, _ in steps] == list(range(1, EPOCHS + 1))
        assert [value for _, value in steps] == pytest.approx(history, rel=1e-6)
        report = json.loads((pipeline.root / f"reports/eval/{variant}@42.json").read_text())
        (accuracy,) = stack.pg.query(
            "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test/accuracy'",
            (run_id,),
        )
        assert accuracy[0] == pytest.approx(report["test_accuracy"])
    penalties = {
        variant: stack.pg.query(
            "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'train/penalty'",
            (run_id,),
        )[0][0]
        for variant, run_id in pipeline.run_ids.items()
    }
    assert penalties["baseline"] == 0.0 and penalties["l2"] > 0.0


def test_artifacts_and_the_model_are_objects_in_the_bucket(stack, pipeline):
    keys = stack.s3.keys(ARTIFACTS_BUCKET)
    for variant, run_id in pipeline.run_ids.items():
        run_keys = {key.split(f"{run_id}/artifacts/", 1)[1] for key in keys if run_id in key}
        assert {
            "config.json",
            "model_summary.txt",
            "environment/requirements.txt",
            "weights/histograms.json",
            "evaluation/report.json",
        } <= run_keys, sorted(run_keys)
        (config_key,) = [key for key in keys if key.endswith(f"{run_id}/artifacts/config.json")]
        body = stack.s3.client().get_object(Bucket=ARTIFACTS_BUCKET, Key=config_key)["Body"]
        assert json.loads(body.read())["variant"] == variant
    models = [key for key in keys if key.endswith("/MLmodel")]
    assert len(models) == len(VARIANTS), models
    # The server proxied everything: nothing landed on its local disk.
    assert not list(stack.root.glob("server/mlartifacts"))


def test_logged_model_predicts_through_the_server(stack, pipeline, monkeypatch):
    import keras
    import mlflow

    for name, value in pipeline.env.items():
        if name.startswith("MLFLOW_"):
            monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(stack.uri)
    model = mlflow.pyfunc.load_model(f"runs:/{pipeline.run_ids['l2']}/model")
    x = served_inputs(pipeline.root / "data/processed")[:16]
    predicted = np.asarray(model.predict(x))
    assert predicted.shape == (16, 10)
    # The very model the stage wrote to models/l2@42, whose logits the server turns
    # into class probabilities.
    from reglab.evaluate.metrics import softmax

    local = keras.models.load_model(next(pipeline.root.glob("models/l2@*/model.keras")))
    expected = softmax(local.predict(x, verbose=0))
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)


def everything_logged(stack: Stack, pipeline: Pipeline) -> dict[str, str]:
    """Every row of every table of the tracking database, every artifact, every log line."""
    found = {}
    tables = stack.pg.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    for (table,) in tables:
        rows = stack.pg.query(f'SELECT t::text FROM "{table}" t')
        found[f"table {table}"] = "\n".join(row[0] for row in rows)
    client = stack.s3.client()
    for key in stack.s3.keys(ARTIFACTS_BUCKET):
        body = client.get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"].read()
        found[f"s3://{ARTIFACTS_BUCKET}/{key}"] = body.decode("latin-1")
    found["dvc repro output"] = pipeline.output
    for path in [*pipeline.root.glob(".reglab/runs/*.json"), *pipeline.root.rglob("reports/**/*")]:
        if path.is_file():
            found[str(path)] = path.read_text(errors="replace")
    return found


def test_no_planted_secret_reaches_the_store_the_artifacts_or_the_logs(stack, pipeline):
    logged = everything_logged(stack, pipeline)
    assert any("environment/requirements.txt" in where for where in logged)
    # The config names the database with its password; the runs were logged to the
    # workstation's server instead, and the password reached none of what was logged.
    assert stack.uri in logged["table params"]
    for secret in PLANTED:
        leaks = [where for where, text in logged.items() if secret in text]
        assert not leaks, f"{secret!r} found in {leaks}"


def test_unauthenticated_and_unpermitted_users_cannot_write(stack, pipeline, monkeypatch):
    if not stack.auth:
        pytest.skip("MLflow's basic-auth app needs Flask-WTF (mlflow[auth]), not installed")
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    search = f"{stack.uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert requests.get(search, timeout=60).status_code == 401
    assert requests.get(search, auth=(ALICE[0], "wrong-password-1"), timeout=60).status_code == 401
    assert requests.get(search, auth=ALICE, timeout=60).status_code == 200

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", BOB[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", BOB[1])
    bob = MlflowClient(tracking_uri=stack.uri)
    experiment = bob.get_experiment_by_name("reglab")  # READ is the default permission
    with pytest.raises(MlflowException) as refused:
        bob.create_run(experiment.experiment_id)
    assert refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException):
        bob.log_param(pipeline.run_ids["l2"], "sneaky", "1", synchronous=True)
    (rows,) = stack.pg.query(
        "SELECT count(*) FROM params WHERE key = 'sneaky'",
    )
    assert rows[0] == 0
    # Alice, who created the experiment, may grant him EDIT; then he can write.
    response = requests.post(
        f"{stack.uri}/api/3.0/mlflow/users/permissions/grant",
        json={
            "username": BOB[0],
            "resource_type": "experiment",
            "resource_id": experiment.experiment_id,
            "permission": "EDIT",
        },
        auth=ALICE,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    run_id = bob.create_run(experiment.experiment_id, run_name="bob").info.run_id
    bob.set_terminated(run_id, "FINISHED")
    assert stack.pg.query("SELECT name FROM runs WHERE run_uuid = %s", (run_id,)) == [("bob",)]


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@dataclasses.dataclass
class Pushed:
    remote: list[str]  # the DVC bucket's keys after `dvc push --run-cache`
    processed_before_pull: bool  # data/processed in the fresh clone before `dvc pull`
    original: dict[str, dict[str, str]]  # folder -> tree_digest, in the repository
    cloned: dict[str, dict[str, str]]  # the same, in the clone after `dvc pull --run-cache`
    repro_again: str  # `dvc repro` in the clone


SHARED_FOLDERS = ("data", "models", ".dvc/cache/runs")


def push_and_pull_in_a_fresh_clone(
    stack: Stack, pipeline: Pipeline, pushed: threading.Event, base: Path
) -> Pushed:
    try:
        run(["dvc", "push", "--run-cache"], pipeline.root, pipeline.env)
        remote = stack.s3.keys(DVC_BUCKET, "reglab/")
        original = {folder: tree_digest(pipeline.root / folder) for folder in SHARED_FOLDERS}
    finally:
        pushed.set()
    clone = base / "clone"
    run(["git", "clone", "-q", str(pipeline.origin), str(clone)], base, pipeline.env)
    processed_before_pull = (clone / "data/processed").exists()
    run(["dvc", "pull", "--run-cache"], clone, pipeline.env)
    cloned = {folder: tree_digest(clone / folder) for folder in SHARED_FOLDERS}
    again = run(["dvc", "repro"], clone, pipeline.env)
    return Pushed(remote, processed_before_pull, original, cloned, again.stdout)


def test_dvc_push_and_a_fresh_clone_pulls_data_models_and_run_cache(pipeline):
    pushed = pipeline.pushed.result(timeout=900)
    remote = pushed.remote
    assert any(key.startswith("reglab/files/md5/") for key in remote), remote[:5]
    assert any(key.startswith("reglab/runs/") for key in remote), remote[:5]
    assert not pushed.processed_before_pull  # a fresh clone has only git-tracked files
    for folder in SHARED_FOLDERS:
        assert pushed.original[folder], folder
        assert pushed.cloned[folder] == pushed.original[folder], folder
    assert stages_run(pushed.repro_again) == set(), pushed.repro_again


@dataclasses.dataclass
class SharedExperiment:
    origin_refs: str  # refs/exps in the bare origin after `dvc exp push`
    listed: list[str]  # `dvc exp list` in the teammate's clone after `dvc exp pull`
    report: dict  # reports/eval/l2@42.json there after `dvc exp apply` + `dvc checkout`
    models: dict[str, str]  # tree_digest of its models/


def share_an_experiment(
    pipeline: Pipeline, pushed: threading.Event, base: Path
) -> SharedExperiment:
    root, env = pipeline.root, pipeline.env
    assert pushed.wait(timeout=900), "`dvc push` never ended"
    # An experiment of the current results (no retraining: `dvc exp save`).
    run(["dvc", "exp", "save", "-n", "shared-results"], root, env)
    run(["dvc", "exp", "push", "origin", "shared-results"], root, env)
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=pipeline.origin,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    clone = base / "teammate"
    run(["git", "clone", "-q", str(pipeline.origin), str(clone)], base, env)
    run(["dvc", "exp", "pull", "origin", "shared-results"], clone, env)
    listed = run(["dvc", "exp", "list", "--name-only"], clone, env).stdout.split()
    run(["dvc", "exp", "apply", "shared-results"], clone, env)
    run(["dvc", "checkout"], clone, env)
    report = json.loads((clone / "reports/eval/l2@42.json").read_text())
    return SharedExperiment(refs, listed, report, tree_digest(clone / "models"))


def test_dvc_exp_push_and_pull_share_an_experiment(pipeline):
    shared = pipeline.shared_experiment.result(timeout=900)
    assert shared.origin_refs.strip().endswith("/shared-results"), shared.origin_refs
    assert "shared-results" in shared.listed
    assert shared.report == json.loads((pipeline.root / "reports/eval/l2@42.json").read_text())
    assert shared.models == tree_digest(pipeline.root / "models")


# --- many writers at once -------------------------------------------------------------------
#
# Four processes, one variant each, start at the same moment (with the pipeline's
# `dvc repro`). Each is one `reglab train` multirun of two jobs: the first logs to a
# fresh sqlite store (the four race to create its tables), the second to the
# server, where PostgreSQL is restarted once the first epoch has arrived. One
# TensorFlow start-up per process serves both stores.

WRITERS = ["baseline", "l1", "l2", "dropout"]
RUN_NAMES = [f"{writer}@42" for writer in WRITERS]
WRITER_EPOCHS = 6  # long enough that the four runs overlap despite their start-up jitter
# Epoch metrics every run logs at every step.
EPOCH_KEYS = ("train/data_loss", "train/penalty", "val/data_loss", "val/accuracy")
IN_EXPERIMENT = (
    "JOIN runs r ON r.run_uuid = x.run_uuid "
    "JOIN experiments e ON e.experiment_id = r.experiment_id "
    "WHERE e.name = 'writers' AND r.lifecycle_stage = 'active'"
)


def start_trainings(project: Path, stores: list[str], env: dict[str, str]) -> list:
    """`reglab train -m` of each writer over ``stores``, all started at the same moment."""
    env = {**env, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    overrides = [
        *DIGITS,
        f"train.epochs={WRITER_EPOCHS}",
        "tracking.log_model=false",
        "tracking.histogram_every=100",
        "tracking.experiment=writers",
        "tracking.uri=" + ",".join(stores),
        # The pipeline's folders, not one Hydra folder per process: the four are one
        # pipeline and share its parent run, as the pipeline's train stages do.
        "paths.models=models",
        "paths.history=reports/history",
    ]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "reglab", "train", "-m", f"variant={variant}", *overrides,
             f"hydra.sweep.dir=multirun/{variant}"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for variant in WRITERS
    ]  # fmt: skip


def finish(processes: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        assert "database is locked" not in output
    return outputs


@dataclasses.dataclass
class Writers:
    sqlite: Path
    epochs_before_restart: int
    restart_began_ms: int
    restart_ended_ms: int


def logged_epochs(pg: Postgres) -> int:
    (count,) = pg.query(
        f"SELECT count(*) FROM metrics x {IN_EXPERIMENT} AND x.key = 'val/data_loss'"
    )
    return count[0]


def train_four_writers(stack: Stack, restarted: threading.Event) -> Writers:
    """Start the four, restart PostgreSQL once an epoch is in it, wait for the four."""
    import requests

    database = stack.writers_project / "mlflow.db"  # fresh: the four race to create its tables
    env = client_env(stack)
    del env["MLFLOW_TRACKING_URI"]  # each job's tracking.uri says where it logs
    try:
        # The experiment exists on the server before its writers start, as a team's
        # does. (Four processes creating it at once under basic auth: one was refused
        # its first run, 403; the creator's permission seems to be granted only after
        # the new experiment is already visible to the others.)
        response = requests.post(
            f"{stack.uri}/api/2.0/mlflow/experiments/create",
            json={"name": "writers"},
            auth=ALICE if stack.auth else None,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        stores = [f"sqlite:///{database}", stack.uri]
        processes = start_trainings(stack.writers_project, stores, env)
        try:
            deadline = time.monotonic() + 600
            while not logged_epochs(stack.pg) and time.monotonic() < deadline:
                if all(process.poll() is not None for process in processes):
                    break
                time.sleep(0.1)
            before = logged_epochs(stack.pg)
            began = int(time.time() * 1000)
            stack.pg.restart()
            ended = int(time.time() * 1000)
        finally:
            restarted.set()
            finish(processes)
    finally:
        restarted.set()
    return Writers(database, before, began, ended)


@dataclasses.dataclass
class WritersRun:
    finished: Future  # of Writers
    restarted: threading.Event  # PostgreSQL's restart is over (or will not come)


@pytest.fixture(scope="module")
def writers_run(stack) -> Iterator[WritersRun]:
    """The four writers in the background; the module waits for them before the
    stack stops (they end, or are killed, in any case)."""
    restarted = threading.Event()
    with ThreadPoolExecutor(1) as background:
        yield WritersRun(background.submit(train_four_writers, stack, restarted), restarted)


@pytest.fixture(scope="module")
def writers(writers_run) -> Writers:
    return writers_run.finished.result()


def check_every_write_arrived(query, at_once: bool = True) -> dict[str, int]:
    """One run per writer (and one parent), every param, every metric step exactly once;
    with ``at_once``, the four runs were all going at one moment."""
    runs = query(
        f"SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time FROM runs x {IN_EXPERIMENT}"
    )
    assert sorted(name for _, name, *_ in runs) == sorted([*RUN_NAMES, "pipeline"])
    writers = {uuid: name.partition("@")[0] for uuid, name, *_ in runs if name != "pipeline"}
    assert all(status == "FINISHED" for _, _, status, *_ in runs)
    spans = [(start, end) for uuid, _, _, start, end in runs if uuid in writers]
    if at_once:
        assert max(start for start, _ in spans) < min(end for _, end in spans), "not all at once"

    params = query(f"SELECT x.run_uuid, x.key, x.value FROM params x {IN_EXPERIMENT}")
    per_run = {uuid: {k: v for u, k, v in params if u == uuid} for uuid in writers}
    counts = {len(found) for found in per_run.values()}
    assert len(counts) == 1 and counts.pop() > 50, {writers[u]: len(p) for u, p in per_run.items()}
    assert {writers[u]: found["variant"] for u, found in per_run.items()} == {w: w for w in WRITERS}

    steps = query(
        f"SELECT x.run_uuid, x.key, x.step, count(*) FROM metrics x {IN_EXPERIMENT} "
        "GROUP BY x.run_uuid, x.key, x.step"
    )
    assert all(count == 1 for *_, count in steps), "a metric step was written twice"
    for uuid, name in writers.items():
        for key in EPOCH_KEYS:
            logged = sorted(step for u, k, step, _ in steps if (u, k) == (uuid, key))
            assert logged == list(range(1, WRITER_EPOCHS + 1)), (name, key, logged)
    first_start, last_end = min(start for start, _ in spans), max(end for _, end in spans)
    return {
        "runs": len(runs),
        "params": len(params),
        "metric_values": len(steps),
        "seconds": round((last_end - first_start) / 1000, 1),  # first run's start to last's end
    }


def test_four_trainings_at_once_on_a_fresh_sqlite_store(writers):
    import sqlite3

    def query(sql: str) -> list:
        with contextlib.closing(sqlite3.connect(writers.sqlite)) as connection:
            return connection.execute(sql).fetchall()

    figures = check_every_write_arrived(query)
    print(f"sqlite, {len(WRITERS)} writers at once: {figures}")


def test_four_trainings_at_once_on_the_server_survive_a_postgresql_restart(stack, writers):
    before = writers.epochs_before_restart
    assert 0 < before < len(WRITERS) * WRITER_EPOCHS, "the restart was not during the epochs"
    # Not all four at once, necessarily: a writer whose run was created during the
    # restart waits for PostgreSQL (seconds) while the others may train to their end.
    # The sqlite test, on the same four processes, checks that they overlapped.
    figures = check_every_write_arrived(stack.pg.query, at_once=False)
    # Epochs that began after PostgreSQL was back were logged, and the runs ended then.
    (after,) = stack.pg.query(
        f"SELECT count(*) FROM metrics x {IN_EXPERIMENT} "
        "AND x.key = 'val/data_loss' AND x.timestamp > %s",
        (writers.restart_ended_ms,),
    )
    assert after[0] > 0, "no epoch was logged after the restart"
    ended = stack.pg.query(
        f"SELECT r.end_time FROM runs x {IN_EXPERIMENT} AND r.name <> 'pipeline'"
    )
    assert max(end for (end,) in ended) > writers.restart_ended_ms
    print(
        f"server, {len(WRITERS)} writers, PostgreSQL restarted after {before} epochs "
        f"({after[0]} logged after it): {figures}"
    )
