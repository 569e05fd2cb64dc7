"""Does the project train as fast as a bare Keras script? Measured, in one run.

``python -m bench.benchmark`` (or ``make bench``) times, on this machine, the
same data, model, batch size and epochs:

1. ``bare``: the tutorials' script (``model.fit`` on in-memory arrays with
   validation data, no tracking), and
2. ``project``: ``reglab.train.run.train_variant`` with everything on (MLflow
   into a temporary sqlite store, loss decomposition, weight statistics and
   histograms, the model logged).

Each run is a fresh Python process; the two alternate (bare first, then
project first, ...) and the report gives medians, because a shared machine is
noisy. It also measures the dense matmul FLOP/s of the machine against the
training FLOP/s the model achieves, input pipelines and batch sizes, and, with
``--with-repro``, the default ``dvc repro`` in a temporary copy of the project.

Writes a JSON file and prints a table. ``--tiny`` is the seconds-long smoke
version the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.project_copy import clean_environment, copy_project

log = logging.getLogger("bench")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results" / "latest.json"
# Tracking may cost at most 3 % of the bare script's throughput (issue 8).
TARGET_RATIO = 0.97
# Above this 1-minute load average a 2-core machine is busy with something else.
QUIET_LOAD = 0.5


class BenchmarkError(RuntimeError):
    """A workload failed; the message says which and where its log is."""


@dataclass
class Settings:
    tiny: bool = False
    epochs: int = 6
    batch_size: int | None = None
    repeats: int = 3
    variant: str = "baseline"
    overrides: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    pipelines: list[str] = field(
        default_factory=lambda: ["arrays", "tf_data", "epoch_batches", "synthetic"]
    )
    pipeline_epochs: int = 3
    matmul_size: int = 2048
    matmul_repeats: int = 10
    with_repro: bool = False
    # bench/whole.py's comparisons of whole processes: "stage", "pipeline".
    whole: list[str] = field(default_factory=list)
    profile: bool = False
    workdir: str | None = None
    keep: bool = False

    @classmethod
    def tiny_mode(cls, **changes: Any) -> Settings:
        """A few hundred images, two epochs, one repetition: seconds, not minutes."""
        settings = cls(
            tiny=True,
            epochs=2,
            repeats=1,
            overrides=["experiment=tiny"],
            batch_sizes=[32],
            pipeline_epochs=2,
            matmul_size=512,
            matmul_repeats=3,
        )
        for key, value in changes.items():
            setattr(settings, key, value)
        return settings

    def config_overrides(self, workspace: Path) -> list[str]:
        """Hydra overrides for the benchmark's params.yaml: its own data folders."""
        overrides = [
            *self.overrides,
            f"train.epochs={self.epochs}",
            f"paths.raw={workspace / 'data' / 'raw'}",
            f"paths.processed={workspace / 'data' / 'processed'}",
        ]
        if self.batch_size is not None:
            overrides.append(f"train.batch_size={self.batch_size}")
        return overrides


def child_environment() -> dict[str, str]:
    """A clean environment (no MLflow or DVC redirections) that can import bench."""
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def run_workload(kind: str, spec: dict[str, Any], workspace: Path, name: str) -> dict[str, Any]:
    """Run one workload in a fresh Python process; returns its result plus process wall time."""
    spec_path = workspace / f"{name}.spec.json"
    result_path = workspace / f"{name}.result.json"
    log_path = workspace / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    command = [sys.executable, "-m", "bench.workloads", kind, str(spec_path), str(result_path)]
    log.info("%s ...", name)
    start = time.perf_counter()
    with log_path.open("w") as output:
        completed = subprocess.run(
            command, cwd=PROJECT_ROOT, env=child_environment(), stdout=output, stderr=output
        )
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise BenchmarkError(f"{name} exited with {completed.returncode}; {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_s"] = elapsed
    log.info("%s: %.1f s", name, elapsed)
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(run[key]) for run in runs)


def summarize_side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "epoch_samples_per_s",
        "step_samples_per_s",
        "first_epoch_samples_per_s",
        "epoch_s",
        "steps_s",
        "validation_s",
        "epoch_end_s",
        "callbacks_s",
        "peak_rss_mib",
        "process_s",
    ]
    summary = {key: median_of(runs, key) for key in keys}
    summary["epoch_samples_per_s_each"] = [run["epoch_samples_per_s"] for run in runs]
    if "train_variant_s" in runs[0]:
        summary["train_variant_s"] = median_of(runs, "train_variant_s")
        summary["outside_epochs_s"] = median_of(runs, "outside_epochs_s")
    return summary


def summarize_training(
    bare: list[dict[str, Any]], project: list[dict[str, Any]], hardware: dict[str, Any]
) -> dict[str, Any]:
    bare_summary, project_summary = summarize_side(bare), summarize_side(project)
    ratio = project_summary["epoch_samples_per_s"] / bare_summary["epoch_samples_per_s"]
    forward = bare[0]["forward_flops_per_sample"]
    training_flops = 3 * forward
    matmul = hardware["matmul_flops_per_s"]
    return {
        "bare": bare_summary,
        "project": project_summary,
        "ratio": ratio,
        "step_ratio": project_summary["step_samples_per_s"] / bare_summary["step_samples_per_s"],
        # Each repetition's pair, in the order they ran: how steady the ratio is.
        "paired_ratios": [
            run["epoch_samples_per_s"] / bare_run["epoch_samples_per_s"]
            for bare_run, run in zip(bare, project, strict=True)
        ],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "model": {
            "params": bare[0]["params"],
            "forward_flops_per_sample": forward,
            "training_flops_per_sample": training_flops,
            # The same architecture on both sides, or the comparison means nothing.
            "same_model": all(
                run["forward_flops_per_sample"] == forward and run["params"] == bare[0]["params"]
                for run in project
            ),
        },
        "flops": {
            "matmul_flops_per_s": matmul,
            "bare_training_flops_per_s": training_flops * bare_summary["step_samples_per_s"],
            "project_training_flops_per_s": training_flops * project_summary["step_samples_per_s"],
            "bare_fraction_of_matmul": training_flops * bare_summary["step_samples_per_s"] / matmul,
        },
    }


def summarize_pipelines(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per batch size: each pipeline's samples/s and its share of the synthetic ceiling."""
    by_batch: dict[int, dict[str, float]] = {}
    for row in rows:
        by_batch.setdefault(row["batch_size"], {})[row["pipeline"]] = row["samples_per_s"]
    real = [row for row in rows if row["pipeline"] != "synthetic"]
    fastest = max(real, key=lambda row: row["samples_per_s"])
    table = []
    for batch_size, speeds in sorted(by_batch.items()):
        entry: dict[str, Any] = {"batch_size": batch_size, **speeds}
        if "synthetic" in speeds:
            for pipeline in ("arrays", "tf_data", "epoch_batches"):
                if pipeline in speeds:
                    entry[f"{pipeline}_of_synthetic"] = speeds[pipeline] / speeds["synthetic"]
        table.append(entry)
    return {
        "by_batch_size": table,
        "fastest": {"batch_size": fastest["batch_size"], "pipeline": fastest["pipeline"]},
    }


def timed_command(command: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> dict:
    """Wall time and memory of a command and all its children.

    ``peak_tree_rss_mib`` sums the resident memory of the whole process tree,
    sampled every 0.2 s; ``max_process_rss_mib`` is the largest single process
    (the kernel's exact figure, from wait4).
    """
    import psutil

    start = time.perf_counter()
    peak_tree = 0
    with log_path.open("a") as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=output)
        while True:
            finished, status, usage = os.wait4(process.pid, os.WNOHANG)
            if finished == process.pid:
                break
            try:
                root = psutil.Process(process.pid)
                tree = [root, *root.children(recursive=True)]
                peak_tree = max(peak_tree, sum(_rss(member) for member in tree))
            except psutil.Error:
                pass
            time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(command)} exited with {process.returncode}; see {log_path}"
        )
    return {
        "wall_s": elapsed,
        "peak_tree_rss_mib": peak_tree / 2**20,
        "max_process_rss_mib": usage.ru_maxrss / 1024.0,
    }


def _rss(process: Any) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def measure_repro(workspace: Path, overrides: list[str]) -> dict[str, Any]:
    """The pipeline, as `make run` runs it, in a temporary copy of the project.

    ``overrides`` (the benchmark's own, such as ``experiment=tiny``) go into the
    composed params.yaml; with none it is the default pipeline.
    """
    copy = copy_project(workspace / "project", overrides)
    env = child_environment()
    env.pop("PYTHONPATH")
    log_path = workspace / "repro.log"
    log.info(
        "dvc repro %s...", " ".join(overrides) + " " if overrides else "(the default pipeline) "
    )
    first = timed_command(["dvc", "repro"], copy, env, log_path)
    log.info("dvc repro: %.0f s", first["wall_s"])
    unchanged = timed_command(["dvc", "repro"], copy, env, log_path)
    exp_show = timed_command(["dvc", "exp", "show", "--no-pager"], copy, env, log_path)
    return {"dvc_repro": first, "dvc_repro_unchanged": unchanged, "dvc_exp_show": exp_show}


def run_benchmark(settings: Settings) -> dict[str, Any]:
    workspace = Path(settings.workdir or tempfile.mkdtemp(prefix="reglab-bench-")).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if load_before[0] > QUIET_LOAD:
        log.warning(
            "load average %.2f (above %.1f): other work shares the CPU; absolute numbers will "
            "be low and noisy, compare the ratios",
            load_before[0],
            QUIET_LOAD,
        )
    started = time.perf_counter()
    try:
        prepared = run_workload(
            "prepare",
            {"workspace": str(workspace), "overrides": settings.config_overrides(workspace)},
            workspace,
            "prepare",
        )
        training_spec = {**prepared, "variant": settings.variant}
        bare_runs: list[dict[str, Any]] = []
        project_runs: list[dict[str, Any]] = []
        for repeat in range(settings.repeats):
            # Alternate which goes first, so a trend in the machine's load hits both alike.
            order = ("bare", "project") if repeat % 2 == 0 else ("project", "bare")
            for kind in order:
                spec = {**training_spec, "run_dir": str(workspace / f"project-{repeat + 1}")}
                result = run_workload(kind, spec, workspace, f"{kind}-{repeat + 1}")
                (bare_runs if kind == "bare" else project_runs).append(result)
        pipeline = run_workload(
            "pipeline",
            {
                **training_spec,
                "batch_sizes": settings.batch_sizes,
                "pipelines": settings.pipelines,
                "pipeline_epochs": settings.pipeline_epochs,
                "matmul_size": settings.matmul_size,
                "matmul_repeats": settings.matmul_repeats,
            },
            workspace,
            "pipeline",
        )
        hardware = pipeline["hardware"]
        profile = None
        if settings.profile:
            # Its own run: cProfile slows Python down, so no timed run is profiled.
            spec = {
                **training_spec,
                "run_dir": str(workspace / "project-profiled"),
                "profile": True,
            }
            profile = run_workload("project", spec, workspace, "project-profiled")["profile"]
        repro = measure_repro(workspace, settings.overrides) if settings.with_repro else None
    finally:
        if not settings.keep:
            shutil.rmtree(workspace, ignore_errors=True)
    return {
        "command": " ".join([Path(sys.executable).name, "-m", "bench.benchmark", *sys.argv[1:]]),
        "settings": asdict(settings),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            **{key: hardware[key] for key in ("device", "cpu_count", "tensorflow")},
        },
        "data": {
            "sizes": prepared["sizes"],
            "epochs": prepared["epochs"],
            "batch_size": prepared["batch_size"],
            "model": prepared["model"],
            "deterministic": prepared["deterministic"],
            "tracking": prepared["tracking"],
        },
        "hardware": hardware,
        "training": summarize_training(bare_runs, project_runs, hardware),
        "input_pipeline": summarize_pipelines(pipeline["rows"]),
        "pipeline_rows": pipeline["rows"],
        "repro": repro,
        "profile": profile,
        "runs": {"bare": bare_runs, "project": project_runs},
        "total_s": time.perf_counter() - started,
    }


def format_report(report: dict[str, Any]) -> str:
    """The readable table printed after a run."""
    training = report["training"]
    bare, project = training["bare"], training["project"]
    data, machine, flops = report["data"], report["machine"], training["flops"]
    giga = 1e9
    lines = [
        f"reglab benchmark: {machine['device']}, {machine['cpu_count']} cores, "
        f"load {machine['load_average_before'][0]:.2f} before / "
        f"{machine['load_average_after'][0]:.2f} after",
        f"data: {data['sizes']['train']} train / {data['sizes']['val']} validation images, "
        f"{data['epochs']} epochs (first is warm-up), batch {data['batch_size']}, "
        f"{len(training['paired_ratios'])} alternating repetition(s), medians",
        "",
        f"{'':34}{'bare':>12}{'project':>12}",
        f"{'samples/s, whole epochs':34}{bare['epoch_samples_per_s']:>12.0f}"
        f"{project['epoch_samples_per_s']:>12.0f}",
        f"{'samples/s, training steps only':34}{bare['step_samples_per_s']:>12.0f}"
        f"{project['step_samples_per_s']:>12.0f}",
        f"{'samples/s, first epoch (tracing)':34}{bare['first_epoch_samples_per_s']:>12.0f}"
        f"{project['first_epoch_samples_per_s']:>12.0f}",
        f"{'epoch: steps s':34}{bare['steps_s']:>12.3f}{project['steps_s']:>12.3f}",
        f"{'epoch: validation s':34}{bare['validation_s']:>12.3f}{project['validation_s']:>12.3f}",
        f"{'epoch: epoch end s':34}{bare['epoch_end_s']:>12.3f}{project['epoch_end_s']:>12.3f}",
        f"{'  of which callbacks s':34}{bare['callbacks_s']:>12.3f}{project['callbacks_s']:>12.3f}",
        f"{'peak RSS MiB':34}{bare['peak_rss_mib']:>12.0f}{project['peak_rss_mib']:>12.0f}",
        f"{'process wall s':34}{bare['process_s']:>12.1f}{project['process_s']:>12.1f}",
    ]
    if "outside_epochs_s" in project:
        lines.append(
            f"{'project: s outside the epochs':34}{'':>12}{project['outside_epochs_s']:>12.1f}"
        )
    verdict = "meets" if training["meets_target"] else "MISSES"
    lines += [
        "",
        f"ratio project/bare (whole epochs): {training['ratio']:.3f} "
        f"({verdict} the {training['target_ratio']} target); training steps only: "
        f"{training['step_ratio']:.3f}; each pair: "
        + ", ".join(f"{ratio:.3f}" for ratio in training["paired_ratios"]),
        f"model: {training['model']['params']} parameters, "
        f"{training['model']['forward_flops_per_sample'] / 1e6:.2f} MFLOP forward, "
        f"{training['model']['training_flops_per_sample'] / 1e6:.2f} MFLOP per training sample"
        + ("" if training["model"]["same_model"] else "  (WARNING: the two models differ)"),
        f"training FLOP/s: bare {flops['bare_training_flops_per_s'] / giga:.1f} G, project "
        f"{flops['project_training_flops_per_s'] / giga:.1f} G; dense matmul "
        f"{flops['matmul_flops_per_s'] / giga:.1f} G "
        f"(n={report['hardware']['matmul_size']}): "
        f"{flops['bare_fraction_of_matmul']:.0%} of it",
        "",
        "input pipeline, training samples/s (synthetic = one batch repeated, the ceiling):",
    ]
    pipelines = report["settings"]["pipelines"]
    lines.append(f"{'batch':>8}" + "".join(f"{name:>15}" for name in pipelines))
    for entry in report["input_pipeline"]["by_batch_size"]:
        lines.append(
            f"{entry['batch_size']:>8}"
            + "".join(f"{entry.get(name, float('nan')):>15.0f}" for name in pipelines)
        )
    fastest = report["input_pipeline"]["fastest"]
    lines.append(f"fastest real pipeline: batch {fastest['batch_size']}, {fastest['pipeline']}")
    if report["repro"]:
        repro = report["repro"]
        lines += [
            "",
            f"dvc repro ({' '.join(report['settings']['overrides']) or 'default pipeline'}): "
            f"{repro['dvc_repro']['wall_s']:.0f} s, peak memory "
            f"{repro['dvc_repro']['peak_tree_rss_mib']:.0f} MiB (process tree), largest process "
            f"{repro['dvc_repro']['max_process_rss_mib']:.0f} MiB",
            f"dvc repro, nothing changed: {repro['dvc_repro_unchanged']['wall_s']:.1f} s; "
            f"dvc exp show: {repro['dvc_exp_show']['wall_s']:.1f} s",
        ]
    if report["profile"]:
        lines += ["", "profile of one project run (cumulative s, calls):"]
        lines += [
            f"{entry['cumulative_s']:>9.2f} {entry['calls']:>6}  {entry['function']}"
            for entry in report["profile"][:20]
        ]
    lines.append(f"\nbenchmark wall time: {report['total_s']:.0f} s")
    return "\n".join(lines)


def finite_positive_numbers(value: Any, path: str = "") -> list[str]:
    """Paths of numbers in ``value`` that are not finite and positive (booleans aside)."""
    bad: list[str] = []
    if isinstance(value, bool) or value is None:
        return bad
    if isinstance(value, int | float):
        if not (math.isfinite(value) and value > 0):
            bad.append(f"{path}={value}")
    elif isinstance(value, dict):
        for key, item in value.items():
            bad += finite_positive_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            bad += finite_positive_numbers(item, f"{path}[{index}]")
    return bad


def run_whole(modes: list[str], settings: Settings, output: Path) -> int:
    """The whole-process comparisons of :mod:`bench.whole`, on the default config."""
    from bench import whole

    workspace = Path(settings.workdir or tempfile.mkdtemp(prefix="reglab-whole-")).resolve()
    repeats = settings.repeats
    results = []
    try:
        for mode in modes:
            results.append(whole.measure(mode, workspace / mode, repeats, settings.variant))
            print(whole.format_result(results[-1]))
    finally:
        if not settings.keep:
            shutil.rmtree(workspace, ignore_errors=True)
    command = " ".join([Path(sys.executable).name, "-m", "bench.benchmark", *sys.argv[1:]])
    output = output if output != DEFAULT_OUTPUT else output.with_name("whole.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    print(f"JSON: {output}")
    return 0


def parse_args(argv: list[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (the tests')")
    parser.add_argument("--epochs", type=int, help="epochs per run, the first is warm-up (6)")
    parser.add_argument("--batch-size", type=int, help="batch size (the config's train.batch_size)")
    parser.add_argument("--repeats", type=int, help="alternating bare/project pairs (3)")
    parser.add_argument("--variant", help="which variant the project trains (baseline)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the project's config, e.g. train.deterministic=false",
    )
    parser.add_argument("--batch-sizes", type=lambda text: [int(size) for size in text.split(",")])
    parser.add_argument("--with-repro", action="store_true", help="also time the default dvc repro")
    parser.add_argument(
        "--stage-vs-bare",
        action="store_true",
        help="only: a train stage's whole process against bench/tutorial.py (bench/whole.py)",
    )
    parser.add_argument(
        "--pipeline-vs-bare",
        action="store_true",
        help="only: dvc repro -f of the default pipeline against one tutorial script per variant",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one project run with cProfile"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON report")
    parser.add_argument("--workdir", help="keep the workspace here instead of a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs, stores)")
    args = parser.parse_args(argv)
    settings = Settings.tiny_mode() if args.tiny else Settings()
    for key in ("epochs", "batch_size", "repeats", "variant", "batch_sizes"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    settings.overrides += args.override
    settings.with_repro = args.with_repro
    settings.whole = [
        mode
        for mode, chosen in (("stage", args.stage_vs_bare), ("pipeline", args.pipeline_vs_bare))
        if chosen
    ]
    settings.profile = args.profile
    settings.workdir = args.workdir
    settings.keep = args.keep or args.workdir is not None
    if settings.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up")
    return settings, args.output


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings, output = parse_args(argv)
    if settings.whole:
        return run_whole(settings.whole, settings, output)
    try:
        report = run_benchmark(settings)
    except BenchmarkError as error:
        log.error("%s", error)
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, output)
    print(format_report(report))
    print(f"JSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
