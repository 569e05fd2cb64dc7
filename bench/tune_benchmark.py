"""Search benchmark: serial against two one-thread trials, and ASHA against the full grid.

python -m bench.tune_benchmark [--trials 12] [--epochs 20]

In a temporary project on the default data (Fashion-MNIST, the default config),
each search run as the pipeline's `tune@l2_strength` stage on a local Ray
instance (its start and, with parallel trials, the search's tracking server
included, as a user waits for them):

1. a 12-trial `l2_strength` search one trial at a time (two TensorFlow threads
   per trial, two CPUs) and the same with two concurrent trials of one thread
   and one CPU each: wall time and trials per hour;
2. the epochs the ASHA search spent against the strength_sweep grid's L2 points
   (conf/variants/strength_sweep.yaml) each run in full (`tune.sampler=grid`, no
   stopping), and the best validation data loss each found. Both use ``--epochs``
   per trial (the pipeline's train.epochs, 20, by default);
3. where each search's time went: its training share, the seconds its trials'
   and repeats' epochs trained over its wall time times its concurrent trials,
   and its trials' start latency, from Ray starting a trial to its first epoch.

``--skip-grid`` leaves out 2 (and the figures that compare with the grid).
``--sampler-seeds 1 2 3`` runs only the parallel search, once per sampler seed, and
reports how often its likely best (over seeds) differs from its single best trial.
``--compare-reuse`` runs 1 and 3 with workers that run trial after trial
(``tune.reuse_workers=true``, the default) and with a new worker per trial, the
two sides alternated A-B-B-A (serial: new, reused; two at a time: reused, new) so
that a machine that drifts slower or faster does not favour one side, and the
grid is left out. Each side's seconds per epoch show whether the epochs
themselves ran at the same speed.

Results go to bench/results/tune.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRID = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # conf/variants/strength_sweep.yaml's L2 points
WITHIN = 1.05  # the target: within 5 % of the grid's best


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def compose(project: Path, *overrides: str) -> None:
    command = [sys.executable, "-m", "reglab", "compose", "--output", "params.yaml", *overrides]
    subprocess.run(command, cwd=project, env=environment(), check=True, capture_output=True)


def prepare(project: Path) -> None:
    project.mkdir(parents=True, exist_ok=True)
    compose(project)
    for stage in ("download", "preprocess"):
        subprocess.run(
            [sys.executable, "-m", f"reglab.stages.{stage}"],
            cwd=project,
            env=environment(),
            check=True,
            capture_output=True,
        )


def trials_of(project: Path, label: str) -> list[dict[str, str]]:
    """The rows of one search's trials.csv (one per trial, in trial order)."""
    with (project / f"outputs/{label}/l2_strength/trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def store(project: Path) -> Any:
    """An MLflow client on the benchmark project's sqlite store."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def search(project: Path, label: str, *overrides: str) -> dict:
    """One search in its own state folder: wall time and the trials it ran."""
    compose(project, f"paths.tune=outputs/{label}", f"paths.tune_state=.reglab/{label}", *overrides)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "reglab.stages.tune", "l2_strength"],
        cwd=project,
        env=environment(),
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - started
    trials = trials_of(project, label)
    scored = [float(t["objective"]) for t in trials if t["objective"]]
    concurrent = int(next(o for o in overrides if "max_concurrent" in o).rpartition("=")[2])
    return {
        "label": label,
        "wall_s": round(wall, 1),
        **where_time_went(project, label, trials, wall, concurrent),
        "trials": len(trials),
        "trials_per_hour": round(len(trials) / wall * 3600, 1),
        "epochs": sum(int(t["epochs"]) for t in trials),
        "states": {
            s: sum(t["state"] == s for t in trials) for s in ("completed", "pruned", "failed")
        },
        "best_val_data_loss": round(min(scored), 4),
        "best_kernel_l2": float(
            min(trials, key=lambda t: float(t["objective"] or "inf"))["kernel.l2"]
        ),
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        **likely_and_single_best(project, label),
    }


def likely_and_single_best(project: Path, label: str) -> dict[str, Any]:
    """From best.yaml: the likely best (the best mean over its seeds), the single best
    trial of one seed before the repeats, and the noise between the first two."""
    import yaml

    best = yaml.safe_load((project / f"outputs/{label}/l2_strength/best.yaml").read_text())
    difference = best.get("difference") or {}
    return {
        "likely_best_trial": best["trial"],
        "likely_best_kernel_l2": best["params"]["kernel.l2"],
        "single_best_trial": best["single_best_trial"],
        "runner_up_p_value": difference.get("p_value"),
    }


def where_time_went(
    project: Path, label: str, trials: list[dict[str, str]], wall: float, concurrent: int
) -> dict[str, Any]:
    """The training share: the seconds the epochs of every trial and repeat trained (as
    the per-epoch hook measures them; the search's parent run sums them) over the
    search's wall time times its concurrent trials; and the trials' start latencies,
    from Ray starting a trial to its first epoch beginning (trials.csv), the first
    trial of each worker apart from the others (those a worker ran after another)."""
    from reglab.tracking.search import PARENT_FILE

    parent = (project / f".reglab/{label}/l2_strength" / PARENT_FILE).read_text().strip()
    metrics = store(project).get_run(parent).data.metrics
    latencies = [float(t["start_latency_s"]) for t in trials if t["start_latency_s"]]
    first, later = latencies[:concurrent], latencies[concurrent:]
    epochs = metrics["epochs_total"] + metrics.get("repeat_epochs_total", 0)
    return {
        "epoch_seconds": round(metrics["epoch_seconds_total"], 1),
        "epochs_with_repeats": int(epochs),
        "seconds_per_epoch": round(metrics["epoch_seconds_total"] / epochs, 3),
        # What is not training, in core-seconds: start-ups, set-up, logging, Ray.
        "outside_epochs_s": round(wall * concurrent - metrics["epoch_seconds_total"], 1),
        "training_share": round(metrics["epoch_seconds_total"] / (wall * concurrent), 3),
        "start_latency_first_s": [round(value, 2) for value in first],
        "start_latency_later_median_s": round(statistics.median(later), 2) if later else None,
        "start_latency_later_max_s": round(max(later), 2) if later else None,
    }


def epochs_to_reach(project: Path, label: str, target: float) -> int | None:
    """Epochs the search had trained, all trials together in the order their epochs
    ended, when one first measured a validation data loss at or below ``target``
    (None if none did). From each trial's per-epoch MLflow history."""
    client = store(project)
    run_ids = [t["run_id"] for t in trials_of(project, label) if t["run_id"]]
    epochs = sorted(
        (metric.timestamp, metric.value)
        for run_id in run_ids
        for metric in client.get_metric_history(run_id, "val/data_loss")
    )
    for spent, (_, value) in enumerate(epochs, start=1):
        if value <= target:
            return spent
    return None


SERIAL = ("tune.max_concurrent=1", "tune.cpus_per_trial=2", "tune.threads_per_trial=2")
PARALLEL = ("tune.max_concurrent=2", "tune.cpus_per_trial=1", "tune.threads_per_trial=1")


def compare_reuse(args: argparse.Namespace) -> int:
    """The serial and parallel searches with and without worker reuse, A-B-B-A."""
    budget = [f"tune.n_trials={args.trials}", f"search_spaces.l2_strength.epochs={args.epochs}"]
    order = [
        ("serial-new", SERIAL, False),
        ("serial-reused", SERIAL, True),
        ("parallel-reused", PARALLEL, True),
        ("parallel-new", PARALLEL, False),
    ]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="reglab-tune-bench-") as tmp:
        project = Path(args.keep or tmp)
        prepare(project)
        for label, mode, reuse in order:
            reused = f"tune.reuse_workers={str(reuse).lower()}"
            rows[label] = search(project, label, *budget, *mode, reused)
            row = rows[label]
            print(
                f"{label:16s} wall {row['wall_s']:7.1f} s  {row['trials']} trials "
                f"{row['trials_per_hour']:6.1f}/h  epochs {row['epochs_with_repeats']} "
                f"({row['seconds_per_epoch']:.3f} s each)  training share "
                f"{row['training_share']:.0%}  outside epochs {row['outside_epochs_s']} s  "
                f"later start latency median {row['start_latency_later_median_s']} s",
                flush=True,
            )
    results = {
        "command": "python -m bench.tune_benchmark --compare-reuse "
        f"--trials {args.trials} --epochs {args.epochs}",
        "cpus": os.cpu_count(),
        "searches": rows,
        "speedup_trials_per_hour": {
            side: round(
                rows[f"parallel-{side}"]["trials_per_hour"]
                / rows[f"serial-{side}"]["trials_per_hour"],
                2,
            )
            for side in ("new", "reused")
        },
    }
    out = ROOT / "bench/results/tune_reuse.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["speedup_trials_per_hour"]))
    return 0


def sampler_seeds(args: argparse.Namespace) -> int:
    """The parallel search under each sampler seed: does the likely best differ from the
    single best trial?"""
    budget = [f"tune.n_trials={args.trials}", f"search_spaces.l2_strength.epochs={args.epochs}"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="reglab-tune-bench-") as tmp:
        project = Path(args.keep or tmp)
        prepare(project)
        for seed in args.sampler_seeds:
            label = f"sampler-seed-{seed}"
            row = search(
                project, label, *budget, *PARALLEL, f"search_spaces.l2_strength.seed={seed}"
            )
            rows.append({"sampler_seed": seed, **row})
            print(
                f"sampler seed {seed}: likely best trial {row['likely_best_trial']} "
                f"(kernel.l2 {row['likely_best_kernel_l2']:.2g}), single best trial "
                f"{row['single_best_trial']}, runner-up p = {row['runner_up_p_value']}",
                flush=True,
            )
    differ = sum(row["likely_best_trial"] != row["single_best_trial"] for row in rows)
    results = {
        "command": "python -m bench.tune_benchmark --sampler-seeds "
        + " ".join(str(seed) for seed in args.sampler_seeds)
        + f" --trials {args.trials} --epochs {args.epochs}",
        "searches": rows,
        "likely_best_differs_from_single_best": f"{differ} of {len(rows)}",
    }
    out = ROOT / "bench/results/tune_sampler_seeds.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["likely_best_differs_from_single_best"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune_benchmark")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial")
    parser.add_argument("--keep", help="run in this folder and keep it")
    parser.add_argument(
        "--reduction-factor", type=int, help="ASHA's reduction factor (the config's by default)"
    )
    parser.add_argument(
        "--skip-serial", action="store_true", help="only the parallel ASHA search and the grid"
    )
    parser.add_argument(
        "--skip-grid", action="store_true", help="only the serial and parallel ASHA searches"
    )
    parser.add_argument(
        "--compare-reuse",
        action="store_true",
        help="the serial and parallel searches with reused workers and with a new worker "
        "per trial, alternated; no grid",
    )
    parser.add_argument(
        "--sampler-seeds",
        type=int,
        nargs="+",
        help="only the parallel search, once per sampler seed: its likely and single best",
    )
    args = parser.parse_args(argv)
    if args.compare_reuse:
        return compare_reuse(args)
    if args.sampler_seeds:
        return sampler_seeds(args)
    budget = [f"tune.n_trials={args.trials}", f"search_spaces.l2_strength.epochs={args.epochs}"]
    if args.reduction_factor:
        budget.append(f"tune.reduction_factor={args.reduction_factor}")
    with tempfile.TemporaryDirectory(prefix="reglab-tune-bench-") as tmp:
        project = Path(args.keep or tmp)
        prepare(project)
        load_before = [round(value, 2) for value in os.getloadavg()]
        serial = None
        if not args.skip_serial:
            serial = search(project, "serial", *budget, *SERIAL)
        parallel = search(project, "parallel", *budget, *PARALLEL)
        grid = None if args.skip_grid else search(
            project, "grid", f"search_spaces.l2_strength.epochs={args.epochs}",
            "tune.sampler=grid", "tune.max_concurrent=2",
            "tune.cpus_per_trial=1", "tune.threads_per_trial=1",
            f"search_spaces.l2_strength.params=[{{key: kernel.l2, choices: {GRID}}}]",
        )  # fmt: skip
        # "Reaches the grid's best within 5 %": the epochs spent until a trial first
        # measured that; the grid's own figure for comparison (it knows its best only
        # after all its epochs).
        within = grid["best_val_data_loss"] * WITHIN if grid else None
        for row in (serial, parallel, grid):
            if row is not None and within is not None:
                row["epochs_to_reach_grid_best_within_5pct"] = epochs_to_reach(
                    project, row["label"], within
                )
    results = {
        "command": "python -m bench.tune_benchmark " + " ".join(argv or sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "serial": serial,
        "parallel": parallel,
        "grid": grid,
    }
    if grid is not None:
        results.update(
            asha_epochs_over_grid=round(parallel["epochs"] / grid["epochs"], 2),
            asha_epochs_to_reach_over_grid=(
                None
                if parallel["epochs_to_reach_grid_best_within_5pct"] is None
                else round(parallel["epochs_to_reach_grid_best_within_5pct"] / grid["epochs"], 2)
            ),
            asha_best_over_grid_best=round(
                parallel["best_val_data_loss"] / grid["best_val_data_loss"], 4
            ),
        )
    if serial is not None:
        results["speedup_trials_per_hour"] = round(
            parallel["trials_per_hour"] / serial["trials_per_hour"], 2
        )
    if serial is not None and grid is not None:
        results.update(
            serial_asha_epochs_over_grid=round(serial["epochs"] / grid["epochs"], 2),
            serial_asha_best_over_grid_best=round(
                serial["best_val_data_loss"] / grid["best_val_data_loss"], 4
            ),
        )
    out = ROOT / "bench/results/tune.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for row in (serial, parallel, grid):
        if row is None:
            continue
        print(
            f"{row['label']:9s} wall {row['wall_s']:7.1f} s  {row['trials']:3d} trials  "
            f"{row['trials_per_hour']:7.1f}/h  epochs {row['epochs']:4d}  "
            f"best val_data_loss {row['best_val_data_loss']:.4f}  {row['states']}  "
            f"epochs to reach the grid's best +5 %: "
            f"{row.get('epochs_to_reach_grid_best_within_5pct')}"
        )
        print(
            f"{'':9s} training share {row['training_share']:.0%}  start latency: first "
            f"{row['start_latency_first_s']} s, later median "
            f"{row['start_latency_later_median_s']} s, max {row['start_latency_later_max_s']} s"
        )
    print(json.dumps({k: v for k, v in results.items() if k not in ("serial", "parallel", "grid")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
