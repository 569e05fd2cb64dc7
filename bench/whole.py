"""The product against the tutorials' script, whole processes, as ratios measured in one run.

``python -m bench.whole`` (``make bench``) times, in a copy of the project:

- ``--stage``: ``python -m reglab.stages.train <variant>@<seed>`` (everything the
  stage does: imports, config, tracking, training, outputs, the test-set
  evaluation) against ``bench/tutorial.py`` on the same data, model, epochs,
  validation and test sets;
- ``--pipeline``: ``dvc repro -f`` of the default pipeline against the tutorial
  script once per variant (five by default), one after another.

With neither, both. The copy (:func:`tests.project_copy.copy_project`) has its
own ``src`` first on the path. The two sides alternate (bare first, then the
project first, ...) so a change in the machine's load hits both alike; the
report gives each pair's ratio and the ratio of the medians, each side's CPU
time, and the load average before and after every sample. ``--tiny`` is the
smoke version the tests run (``experiment=tiny``, one pair of each).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.project_copy import clean_environment, copy_project

log = logging.getLogger("bench.whole")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results" / "whole.json"
TUTORIAL = Path(__file__).with_name("tutorial.py")
# The targets: a train stage within 1.10x of the tutorial script, the
# default pipeline within 1.3x of one tutorial script per variant.
TARGETS = {"stage": 1.10, "pipeline": 1.30}


def project_environment(copy: Path) -> dict[str, str]:
    env = clean_environment()
    env["PYTHONPATH"] = str(copy / "src")
    return env


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Wall time of a whole process, the CPU time of it and all its children (less moved
    by other work on the machine than the wall time), and the 1-minute load average
    before and after."""
    load_before = os.getloadavg()[0]
    cpu_before = children_cpu_s()
    start = time.perf_counter()
    with log_path.open("a") as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        completed = subprocess.run(command, cwd=cwd, env=env, stdout=output, stderr=output)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(
            f"{' '.join(command)} exited with {completed.returncode}; {log_path}:\n{tail}"
        )
    return {
        "wall_s": elapsed,
        "cpu_s": children_cpu_s() - cpu_before,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def tutorial_specs(copy: Path, env: dict[str, str]) -> dict[str, Path]:
    """One spec file per variant of the copy's params.yaml, for bench/tutorial.py."""
    code = (
        "import json, sys\n"
        "from reglab.config.compose import load_params\n"
        "c = load_params()\n"
        "print(json.dumps({'seed': c.seeds[0], 'epochs': c.train.epochs,\n"
        "  'batch_size': c.train.batch_size, 'learning_rate': c.optimizer.learning_rate,\n"
        "  'processed': c.paths.processed, 'num_classes': c.data.num_classes,\n"
        "  'conv_filters': list(c.model.conv_filters), 'kernel_size': c.model.kernel_size,\n"
        "  'dense_units': list(c.model.dense_units),\n"
        "  'variants': {n: {'l1': r.kernel.l1, 'l2': r.kernel.l2,\n"
        "    'conv_dropout': r.dropout.conv_rate, 'dense_dropout': r.dropout.dense_rate}\n"
        "    for n, r in c.variants.items()}}))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True, check=True
    )
    config = json.loads(shown.stdout)
    specs = {}
    for name, recipe in config.pop("variants").items():
        path = copy.parent / f"tutorial-{name}.json"
        timings = copy.parent / f"tutorial-{name}.test_s"
        path.write_text(
            json.dumps(
                {
                    **config,
                    **recipe,
                    "processed": str(copy / config["processed"]),
                    "timings": str(timings),
                }
            )
        )
        specs[name] = path
    return specs


def choose_experiment(experiment: str | None) -> dict[str, str]:
    """conf/config.yaml with ``experiment`` chosen, as a user picks a preset (the
    check stage refuses a params.yaml composed with overrides that conf/ lacks)."""
    if experiment is None:
        return {}
    config = (PROJECT_ROOT / "conf" / "config.yaml").read_text()
    chosen = config.replace("  - experiment: null", f"  - experiment: {experiment}")
    if chosen == config:
        raise ValueError("conf/config.yaml has no `- experiment: null` default to replace")
    return {"conf/config.yaml": chosen}


def ratios(bare: list[float], project: list[float]) -> dict[str, Any]:
    pairs = [p / b for b, p in zip(bare, project, strict=True)]
    return {
        "bare_s": bare,
        "project_s": project,
        "bare_median_s": statistics.median(bare),
        "project_median_s": statistics.median(project),
        "ratio_of_medians": statistics.median(project) / statistics.median(bare),
        "pair_ratios": pairs,
    }


def measure(
    mode: str,
    workspace: Path,
    repeats: int,
    variant: str = "baseline",
    experiment: str | None = None,
) -> dict[str, Any]:
    """``repeats`` alternating pairs of ``mode`` (``stage`` or ``pipeline``) in a fresh
    copy, on the default config or the preset ``experiment`` chosen in its conf/."""
    copy = copy_project(workspace / "project", files=choose_experiment(experiment))
    env = project_environment(copy)
    log_path = workspace / f"{mode}.log"
    log.info("setting up %s: dvc repro preprocess", copy)
    timed(["dvc", "repro", "preprocess"], copy, env, log_path)
    specs = tutorial_specs(copy, env)
    key = f"{variant}@{json.loads(specs[variant].read_text())['seed']}"

    def bare() -> dict[str, Any]:
        names = list(specs) if mode == "pipeline" else [variant]
        runs = []
        for name in names:
            runs.append(
                timed([sys.executable, str(TUTORIAL), str(specs[name])], copy, env, log_path)
            )
            timings = json.loads(specs[name].read_text())["timings"]
            runs[-1]["test_s"] = float(Path(timings).read_text().split()[-1])
        test_s = sum(run["test_s"] for run in runs)
        return {
            "wall_s": sum(run["wall_s"] for run in runs),
            # The same processes less their final test evaluation (the first
            # comparison, from before the train stage evaluated on the test set).
            "wall_without_test_s": sum(run["wall_s"] for run in runs) - test_s,
            "test_s": test_s,
            "cpu_s": sum(run["cpu_s"] for run in runs),
            "load_before": runs[0]["load_before"],
            "load_after": runs[-1]["load_after"],
            "scripts": len(runs),
        }

    def project() -> dict[str, Any]:
        if mode == "pipeline":
            return timed(["dvc", "repro", "-f"], copy, env, log_path)
        return timed([sys.executable, "-m", "reglab.stages.train", key], copy, env, log_path)

    samples: dict[str, list[dict[str, Any]]] = {"bare": [], "project": []}
    for repeat in range(repeats):
        order = ("bare", "project") if repeat % 2 == 0 else ("project", "bare")
        for side in order:
            sample = bare() if side == "bare" else project()
            samples[side].append(sample)
            log.info(
                "%s %s %d: %.1f s, CPU %.1f s (load %.1f -> %.1f)",
                mode,
                side,
                repeat + 1,
                sample["wall_s"],
                sample["cpu_s"],
                sample["load_before"],
                sample["load_after"],
            )
    result = ratios(
        [s["wall_s"] for s in samples["bare"]], [s["wall_s"] for s in samples["project"]]
    )
    without_test = ratios(
        [s["wall_without_test_s"] for s in samples["bare"]],
        [s["wall_s"] for s in samples["project"]],
    )
    cpu = ratios([s["cpu_s"] for s in samples["bare"]], [s["cpu_s"] for s in samples["project"]])
    scripts = len(specs) if mode == "pipeline" else 1
    return {
        "mode": mode,
        "project_command": "dvc repro -f"
        if mode == "pipeline"
        else f"python -m reglab.stages.train {key}",
        "bare_command": f"python bench/tutorial.py <spec>, {scripts} script(s) one after another",
        "target": TARGETS[mode],
        "samples": samples,
        **result,
        "bare_without_test": without_test,
        "cpu": cpu,
    }


def format_result(result: dict[str, Any]) -> str:
    loads = [
        s[k]
        for side in result["samples"].values()
        for s in side
        for k in ("load_before", "load_after")
    ]
    cpu = result["cpu"]
    return "\n".join(
        [
            f"{result['mode']}: {result['project_command']}  vs  {result['bare_command']}",
            f"  project: {', '.join(f'{s:.1f}' for s in result['project_s'])} s "
            f"(median {result['project_median_s']:.1f})",
            f"  bare:    {', '.join(f'{s:.1f}' for s in result['bare_s'])} s "
            f"(median {result['bare_median_s']:.1f})",
            f"  ratio of medians {result['ratio_of_medians']:.3f} (target {result['target']:.2f}); "
            f"pairs {', '.join(f'{r:.3f}' for r in result['pair_ratios'])}; "
            f"1-min load {min(loads):.1f}-{max(loads):.1f}",
            f"  bare less its test evaluation: "
            f"{', '.join(f'{s:.1f}' for s in result['bare_without_test']['bare_s'])} s; "
            f"ratio of medians {result['bare_without_test']['ratio_of_medians']:.3f}; pairs "
            f"{', '.join(f'{r:.3f}' for r in result['bare_without_test']['pair_ratios'])}",
            f"  CPU time: project {', '.join(f'{s:.1f}' for s in cpu['project_s'])} s, "
            f"bare {', '.join(f'{s:.1f}' for s in cpu['bare_s'])} s; "
            f"ratio of medians {cpu['ratio_of_medians']:.3f}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(
        prog="python -m bench.whole", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", action="store_true", help="a train stage against one script")
    parser.add_argument(
        "--pipeline", action="store_true", help="dvc repro -f against one script per variant"
    )
    parser.add_argument("--repeats", type=int, help="alternating pairs of each (3; --tiny: 1)")
    parser.add_argument("--variant", default="baseline", help="the stage's variant (baseline)")
    parser.add_argument(
        "--tiny", action="store_true", help="experiment=tiny, one pair: the tests' smoke run"
    )
    parser.add_argument("--experiment", help="a preset of conf/experiment/ (none: the default)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON report")
    parser.add_argument("--workdir", type=Path, help="run and keep the copies and logs here")
    args = parser.parse_args(argv)
    modes = [mode for mode in ("stage", "pipeline") if getattr(args, mode)] or [
        "stage",
        "pipeline",
    ]
    repeats = args.repeats or (1 if args.tiny else 3)
    experiment = args.experiment or ("tiny" if args.tiny else None)
    workspace = (args.workdir or Path(tempfile.mkdtemp(prefix="reglab-bench-"))).resolve()
    results = []
    try:
        for mode in modes:
            results.append(measure(mode, workspace / mode, repeats, args.variant, experiment))
            print(format_result(results[-1]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workspace, ignore_errors=True)
    command = " ".join(["python -m bench.whole", *(argv if argv is not None else sys.argv[1:])])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"command": command, "experiment": experiment, "results": results}, indent=2)
        + "\n"
    )
    print(f"JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
