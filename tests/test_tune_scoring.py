"""A search scores a trial the way its final model is trained and kept.

Two real trials of a digits search on a training set small enough to overfit (100
images, a high learning rate): one barely regularized, whose validation data loss
dips early and then climbs, and one regularized, which improves more slowly and keeps
most of its gain. Scored at its best epoch the first would win; the search scores
both at the weights their final models keep (here the last epoch's, the recipe has no
early stopping) and picks the second, and the held-out test set, which the final
evaluation reads and the search never does, confirms it. The trials run in this
process through the search's own hook (:class:`~reglab.tune.trial.Reporter`, with Ray
Tune's report collected) and ranking; that Ray hands a trial's last report on as its
objective is the cluster tests' part (tests/test_tune.py).
"""

from __future__ import annotations

import keras
import pytest

from reglab.config.compose import compose_config
from reglab.train.run import evaluate_run, train_variant
from reglab.tune.outcome import Trial, best_trial
from reglab.tune.trial import Reporter, trial_config
from tests.conftest import DIGITS, make_project

pytestmark = pytest.mark.slow

# 100 training images overfit within the trial's epochs; large validation and test
# sets, so that their losses tell the two trials apart beyond their sampling noise.
OVERRIDES = [
    "data.train_size=100",
    "data.validation_size=800",
    "data.test_size=360",
    "train.epochs=40",
    "train.batch_size=8",
    "optimizer.learning_rate=0.01",
]
OVERFITS, KEEPS_ITS_GAIN = 1e-6, 1e-3  # kernel.l2


def test_the_search_picks_by_the_kept_weights_where_best_epoch_scoring_would_not(
    tmp_path, monkeypatch
):
    root = make_project(tmp_path / "project", OVERRIDES)
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = compose_config(DIGITS + OVERRIDES + [f"tracking.uri={uri}"])
    search = config.search_spaces["l2_strength"]
    reported: list[dict] = []
    monkeypatch.setattr("ray.tune.report", reported.append)

    trials, curves, tested = [], {}, {}
    for number, strength in enumerate((OVERFITS, KEEPS_ITS_GAIN)):
        variant = f"l2_strength-{number}"
        trial = trial_config(config, search, variant, {"kernel.l2": strength})
        # What the `_best` variant of this value would train: the same recipe, seed and
        # epochs (train.epochs).
        assert trial.train.epochs == 40 and not trial.variants[variant].early_stopping.enabled
        reported.clear()
        reporter = Reporter(search.objectives, trial.variants[variant].early_stopping)
        keras.backend.clear_session()
        train_variant(trial, f"{variant}@42", hooks=[reporter])
        assert [r["epoch"] for r in reported] == list(range(1, 41))
        curves[strength] = [r["val_data_loss"] for r in reported]
        trials.append(
            Trial(
                number=number,
                trial_id=str(number),
                params={"kernel.l2": strength},
                objective=reported[-1]["objective"],  # what Optuna and the ranking get
                epochs=len(reported),
                state="completed",
            )
        )
        tested[strength] = evaluate_run(trial, f"{variant}@42")["test_data_loss"]

    # The case: the two ways of scoring disagree.
    overfit, regularized = curves[OVERFITS], curves[KEEPS_ITS_GAIN]
    assert min(overfit) < min(regularized), curves  # best epoch: the overfitting one
    assert overfit.index(min(overfit)) < len(overfit) // 2, curves  # it dipped early...
    assert overfit[-1] > min(overfit) * 1.1, curves  # ...and climbed
    assert regularized[-1] < overfit[-1], curves  # kept (last) epoch: the other one
    # The search scores each trial at its last epoch and picks the regularized one...
    assert [t.objective for t in trials] == [overfit[-1], regularized[-1]]
    assert best_trial(trials, search.mode).params == {"kernel.l2": KEEPS_ITS_GAIN}
    # ...and the final evaluation on the held-out test set agrees.
    assert tested[KEEPS_ITS_GAIN] < tested[OVERFITS], tested
