"""The largest Dense kernel's histogram: counts on fixed bins from real trained weights,
and the compare stage's figure of them on a log count axis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reglab.model import weights
from reglab.report import ReportError, load_dense_histograms
from reglab.report import figures as rf
from reglab.report.weight_figures import HistogramImages
from tests.conftest import config_for, digits_splits


def test_dense_histogram_record_counts_fixed_bins_exact_zeros_and_the_outside():
    values = np.array([[0.0, 0.0, 0.001], [-0.3, 0.7, -0.9]], dtype=np.float32)
    record = weights.dense_histogram_record("dense_1/kernel", values)
    assert record["shape"] == [2, 3]
    assert len(record["edges"]) == weights.DENSE_HISTOGRAM_BINS + 1
    assert record["edges"][0] == weights.DENSE_HISTOGRAM_RANGE[0]
    assert record["zeros"] == 2
    assert (record["below"], record["above"]) == (1, 1)
    assert sum(record["counts"]) == 4  # the two outside the range are counted apart
    zero_bin = weights.DENSE_HISTOGRAM_BINS // 2
    assert record["edges"][zero_bin] < 0 < record["edges"][zero_bin + 1]
    assert record["counts"][zero_bin] == 3  # both zeros and 0.001


@pytest.fixture(scope="module")
def trained() -> dict[str, dict]:
    """The project's digits CNN trained briefly as baseline and L1 (the real recipes)."""
    from reglab.train.run import prepare_model

    config = config_for()
    x, y = digits_splits()["train"]
    one_hot = np.eye(10, dtype=np.float32)[y]
    records = {}
    for name in ("baseline", "l1"):
        model = prepare_model(config, config.variant(name), 42, x.shape[1:])
        model.fit(x, one_hot, epochs=3, batch_size=64, shuffle=False, verbose=0)
        records[name] = weights.dense_histogram_record(*weights.largest_dense_kernel(model))
    return records


def test_l1_piles_the_largest_dense_kernel_up_around_zero_on_a_log_axis(trained, tmp_path):
    # The layer holding most of the weights, not the first layer's few.
    assert trained["baseline"]["layer"] == "dense_1/kernel"
    assert np.prod(trained["baseline"]["shape"]) > 10_000

    path = tmp_path / "largest_dense_weights.png"
    series = rf.dense_histogram_figure(
        trained, path, variants=["baseline", "dropout", "l1", "l2", "l1_l2"]
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert series["y_scales"] == ["log"]
    zero_bin = series["zero_bin"]
    assert series["bin_edges"][zero_bin] < 0 < series["bin_edges"][zero_bin + 1]
    around_zero = series["zero_bin_counts"]
    assert around_zero["l1"] > 4 * around_zero["baseline"], around_zero
    assert around_zero == {name: trained[name]["counts"][zero_bin] for name in trained}
    # Each variant's colour is the one every other figure gives it.
    expected = rf.variant_colours(["baseline", "dropout", "l1", "l2", "l1_l2"])
    assert series["colours"] == {name: expected[name] for name in trained}


def test_dense_histograms_load_from_the_weights_files_and_need_the_same_bins(trained, tmp_path):
    reports = {name: [{"run_key": f"{name}@1"}] for name in trained}
    for name, record in trained.items():
        first_layer = {"variant": name, "seed": 1, "layer": "conv_1/kernel", "shape": [1]}
        text = json.dumps({**first_layer, "values": [0.5], "largest_dense": record})
        (tmp_path / f"{name}@1.json").write_text(text)
    assert load_dense_histograms(tmp_path, reports) == trained

    other_bins = {**trained["l1"], "edges": list(np.linspace(-1, 1, len(trained["l1"]["edges"])))}
    with pytest.raises(ReportError, match="other bins"):
        rf.dense_histogram_figure({**trained, "l1": other_bins}, tmp_path / "x.png")


def test_histogram_images_are_one_per_recorded_epoch_and_redrawn_alike():
    """One image per recorded epoch, the same when drawn again on fresh panels; the
    overlay shows the first layer and the last hidden one."""
    rng = np.random.default_rng(0)

    def counts(scale: float) -> dict[str, dict[str, list[float]]]:
        found = {}
        for name in ("conv_1/kernel", "dense/kernel", "dense_1/kernel"):
            values, edges = np.histogram(rng.normal(0.0, scale, 400), bins=25)
            found[name] = {"counts": values.tolist(), "edges": edges.tolist()}
        return found

    recorded = {str(epoch): counts(1.0 / max(epoch, 1)) for epoch in (0, 3, 6)}
    images, overlay = HistogramImages("l2@42", recorded).finish()
    after, _ = HistogramImages("l2@42", dict(recorded)).finish()
    assert list(images) == [0, 3, 6] == list(after)
    for epoch in images:
        assert images[epoch].shape[-1] == 3 and images[epoch].std() > 0
        np.testing.assert_array_equal(images[epoch], after[epoch])
    assert not np.array_equal(images[0], images[6])
    assert overlay.axes[0].get_title() == "conv_1/kernel"
    assert overlay.axes[1].get_title() == "dense/kernel"  # the last hidden kernel
    assert overlay.get_suptitle() == "l2@42: kernel weights at epoch 0 and 6"


@pytest.mark.parametrize("draw", [True, False])
def test_a_run_logs_the_counts_always_and_the_images_only_when_drawn(draw, tracking_uri):
    """A search's trials log the histograms' counts without drawing them
    (tracking.histogram_images=false); other runs get the images as well."""
    import mlflow

    from reglab.tracking.records import log_weight_histograms

    rng = np.random.default_rng(1)
    recorded = {}
    for epoch in ("10", "0", "5"):  # as a resumed run's state may hold them
        values, edges = np.histogram(rng.normal(0.0, 1.0, 100), bins=8)
        recorded[epoch] = {"dense/kernel": {"counts": values.tolist(), "edges": edges.tolist()}}
    # An experiment of its own: the process's active one may be another test's store's.
    with mlflow.start_run(experiment_id=mlflow.create_experiment("histograms")) as run:
        log_weight_histograms(HistogramImages("l2@42", recorded), draw=draw)
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    images = {"weights/histograms_final.png", "weights/histograms_start_end.png"}
    assert logged == {"weights/histograms.json", *(images if draw else ())}
    counts = json.loads(
        Path(client.download_artifacts(run.info.run_id, "weights/histograms.json")).read_text()
    )
    assert list(counts) == ["0", "5", "10"] and counts["10"] == recorded["10"]
    # The images with a step (one per recorded epoch) are MLflow's images/ artifacts.
    stepped = client.list_artifacts(run.info.run_id, "images")
    assert len([a for a in stepped if a.path.endswith(".png")]) == (3 if draw else 0)
