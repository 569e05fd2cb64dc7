"""A search in the pipeline: `dvc exp run -S 'searches=[...]'` end to end, on a Ray
head started here on 127.0.0.1 (tests/ray_nodes.py) and stopped in a finalizer."""

from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from tests.ray_nodes import RayNode, base_env, client, read_trials, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(request):
    """One node, two CPUs: the grid's two trials at once."""
    node = RayNode(num_cpus=2)
    request.addfinalizer(node.stop)
    return node


def test_dvc_exp_run_with_a_search_trains_and_tests_its_best(head, tmp_path):
    """The search is a grid sweep (`tune.sampler: grid`, a multirun on Ray) of two
    points: kernel.l2 = 1e38 overflows the penalty (the loss is not finite in the
    first epoch), so that trial fails; the search goes on, and its best is trained
    and tested."""
    from tests.project_copy import copy_project
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
    env = base_env(RAY_ADDRESS=head.address)
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
    record = json.loads((root / ".reglab/runs/l2_strength_best@42.json").read_text())
    assert record["variant"] == "l2_strength_best"
    best_run = client(root).get_run(record["mlflow_run_id"])
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
        from reglab.config.compose import compose, to_yaml
        from reglab.config.schema import validate

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
