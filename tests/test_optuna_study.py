"""A search's trials in Optuna's own views: the study Optuna reads back from study.db,
its matplotlib figures, and optuna-dashboard showing the study in headless Chromium."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest

from reglab.config.schema import SearchConfig, SearchParamConfig
from reglab.core.net import free_port
from reglab.report.optuna_study import (
    HISTORY,
    IMPORTANCE,
    INTERMEDIATE,
    PARALLEL,
    SLICE,
    write_study_views,
)
from reglab.tune.outcome import Trial
from tests.browser import OFFLINE, chromium
from tests.services import stop_process_group

NAME = "l2_strength"
FIGURES = [HISTORY, IMPORTANCE, PARALLEL, SLICE, INTERMEDIATE]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def space(objective: str = "val_data_loss") -> SearchConfig:
    return SearchConfig(
        params=[
            SearchParamConfig(key="kernel.l2", low=1e-6, high=1e-2, log=True),
            SearchParamConfig(key="dropout.rate", choices=[0.0, 0.25, 0.5]),
        ],
        objective=objective,
        seed=3,
    )


def completed(number: int, l2: float, rate: float, objective: float) -> Trial:
    return Trial(
        number=number,
        trial_id=f"trial_{number}",
        params={"kernel.l2": l2, "dropout.rate": rate},
        objective=objective,
        epochs=3,
        state="completed",
        mlflow_run_id=f"run{number}",
        intermediate=[0.9, 0.6, objective],
    )


def search_trials() -> list[Trial]:
    """Four completed trials, one stopped after two epochs, one failed (in no order)."""
    return [
        completed(0, 1e-5, 0.0, 0.5),
        completed(1, 1e-4, 0.25, 0.4),
        Trial(
            number=4,
            trial_id="trial_4",
            params={"kernel.l2": 5e-3, "dropout.rate": 0.5},
            objective=0.85,
            epochs=2,
            state="pruned",
            mlflow_run_id="run4",
            intermediate=[0.9, 0.85],
        ),
        completed(2, 1e-3, 0.5, 0.3125),
        completed(3, 3e-6, 0.25, 0.55),
        Trial(
            number=5,
            trial_id="trial_5",
            params={"kernel.l2": 1e-2, "dropout.rate": 0.0},
            objective=math.nan,
            epochs=0,
            state="failed",
            error="ValueError: out of memory",
        ),
    ]


def load(directory: Path) -> optuna.Study:
    """The study as a user's script would open it (a '%' in the path quoted, as URLs are)."""
    url = "sqlite:///" + urllib.parse.quote(str(directory / "study.db"))
    return optuna.load_study(study_name=NAME, storage=url)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    # A '%' and a space in the folder: the sqlite URL must quote them.
    directory = tmp_path_factory.mktemp("views") / "my search%20"
    written = write_study_views(NAME, space(), search_trials(), directory)
    return directory, written


def test_optuna_reads_the_trials_back_from_study_db(views):
    directory, written = views
    assert written[0] == directory / "study.db"
    study = load(directory)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs == {"objective": "val_data_loss"}
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4 + ["PRUNED", "FAIL"]
    assert [t.value for t in trials] == [0.5, 0.4, 0.3125, 0.55, 0.85, None]
    assert trials[2].params == {"kernel.l2": 1e-3, "dropout.rate": 0.5}
    assert trials[2].distributions == {
        "kernel.l2": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
        "dropout.rate": optuna.distributions.CategoricalDistribution([0.0, 0.25, 0.5]),
    }
    assert trials[4].intermediate_values == {1: 0.9, 2: 0.85}  # by epoch
    assert trials[2].intermediate_values == {1: 0.9, 2: 0.6, 3: 0.3125}
    assert trials[5].intermediate_values == {}
    assert trials[4].user_attrs == {
        "reglab_trial": 4, "trial_id": "trial_4", "epochs": 2, "mlflow_run_id": "run4"
    }  # fmt: skip
    assert trials[5].user_attrs["error"] == "ValueError: out of memory"
    assert "mlflow_run_id" not in trials[5].user_attrs
    assert study.best_trial.number == 2


def test_every_figure_is_a_drawn_png(views):
    from PIL import Image

    directory, written = views
    figures = directory / "figures"
    assert written[1:] == [figures / name for name in FIGURES]
    for path in written[1:]:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 200, path
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        # Axes, text and marks: far more than a blank canvas's one or two colours.
        assert len(colors) > 50, (path, len(colors))
    assert sorted(p.name for p in directory.rglob("*")) == sorted(["study.db", "figures", *FIGURES])


def test_a_maximized_objective_and_a_completed_trial_without_one(tmp_path):
    trials = [
        completed(0, 1e-5, 0.0, 0.9),
        completed(1, 1e-4, 0.5, 0.8),
        completed(2, 1e-3, 0.25, math.nan),  # Optuna fails such a trial itself
    ]
    write_study_views(NAME, space("val_accuracy"), trials, tmp_path)
    study = load(tmp_path)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.best_trial.number == 0
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.get_trials()[2].value is None


def test_rewriting_replaces_the_study_and_drops_stale_figures(tmp_path, caplog):
    write_study_views(NAME, space(), search_trials(), tmp_path)
    assert len(load(tmp_path).get_trials()) == 6
    assert (tmp_path / "figures" / IMPORTANCE).exists()
    write_study_views(NAME, space(), search_trials(), tmp_path)
    assert len(load(tmp_path).get_trials()) == 6  # replaced, not appended to
    # The same search again with one completed trial: no importances, and not the old ones.
    one = [completed(0, 1e-5, 0.0, 0.5), search_trials()[2]]
    with caplog.at_level(logging.INFO, logger="reglab.report.optuna_study"):
        written = write_study_views(NAME, space(), one, tmp_path)
    assert [t.state.name for t in load(tmp_path).get_trials()] == ["COMPLETE", "PRUNED"]
    assert not (tmp_path / "figures" / IMPORTANCE).exists()
    assert [p.name for p in written] == ["study.db", HISTORY, PARALLEL, SLICE, INTERMEDIATE]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"{NAME}: {IMPORTANCE} skipped: needs two completed trials, 1 completed"], (
        skipped
    )
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporary file left


def test_no_completed_trial_leaves_only_the_study_and_the_epochs(tmp_path, caplog):
    stopped = search_trials()[2]
    with caplog.at_level(logging.INFO, logger="reglab.report.optuna_study"):
        written = write_study_views(NAME, space(), [stopped], tmp_path)
    assert [p.name for p in written] == ["study.db", INTERMEDIATE]
    reasons = {r.getMessage().split(" skipped: ")[0]: r.getMessage() for r in caplog.records}
    assert set(reasons) == {f"{NAME}: {name}" for name in (HISTORY, IMPORTANCE, PARALLEL, SLICE)}
    assert reasons[f"{NAME}: {HISTORY}"].endswith("no trial completed")


def test_optuna_notices_are_quiet_and_pyplot_keeps_its_style(tmp_path, capfd):
    import matplotlib.pyplot as plt

    before = dict(plt.rcParams)
    verbosity = optuna.logging.get_verbosity()
    write_study_views(NAME, space(), search_trials(), tmp_path)
    err = capfd.readouterr().err
    assert "A new study created" not in err, err
    assert "ExperimentalWarning" not in err, err
    assert optuna.logging.get_verbosity() == verbosity
    # Optuna's plots switch to the ggplot style sheet; it must not leak into our figures.
    assert dict(plt.rcParams) == before


def test_a_parameter_outside_the_space_is_named(tmp_path):
    trial = completed(0, 1e-5, 0.0, 0.5)
    trial.params["noise.stddev"] = 0.1
    with pytest.raises(ValueError, match=r"trial 0 has parameters \['noise.stddev'\]"):
        write_study_views(NAME, space(), [trial], tmp_path)
    assert not (tmp_path / "study.db").exists()


# --- optuna-dashboard in headless Chromium --------------------------------------------------


@pytest.fixture
def dashboard(tmp_path, request):
    """``optuna-dashboard sqlite:///<tmp>/study.db`` on a free port; its URL."""
    write_study_views(NAME, space(), search_trials(), tmp_path / "search")
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"),
         f"sqlite:///{tmp_path / 'search' / 'study.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # gunicorn (its server here) puts a control socket in ~/.gunicorn.
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    request.addfinalizer(log.close)
    request.addfinalizer(lambda: stop_process_group(process))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as response:
                assert NAME in response.read().decode()
                return base
        except OSError:
            assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "optuna-dashboard did not answer in 30 s"
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_optuna_dashboard_shows_the_study_and_its_trials(dashboard):
    dom = chromium(*OFFLINE, "--dump-dom", f"{dashboard}/dashboard/studies/1", timeout=60)
    # The study's page, drawn by the dashboard's scripts (not its loading screen): the
    # name, the best trial with its value and parameters, every trial's epochs.
    assert f"{NAME} (id=1)" in dom, dom[-2000:]
    assert "Best Trial (number=2)" in dom, dom[-2000:]
    assert "0.3125" in dom
    assert "kernel.l2: 0.001" in dom and "dropout.rate: 0.5" in dom
    assert all(f"trial #{number}" in dom for number in range(5))  # the stopped one too
    assert "trial #5" not in dom  # the failed trial reported no epoch
