"""How many epochs two one-thread trainings side by side give against one two-thread one.

python -m bench.epoch_threads [--epochs 8] [--rounds 2] [--keep DIR]

The ceiling of a search's two-at-a-time speed-up: whatever a search saves outside
its epochs, two concurrent one-thread trials cannot train more epochs per hour
than two one-thread epochs side by side allow, against one two-thread epoch alone.
In a project on the default data (Fashion-MNIST, 1,000 training and 2,000
validation images, the default CNN, batch 32) each training runs in its own
process, with the TensorFlow thread counts a search gives its trials
(``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``, ``OMP_NUM_THREADS``), as:

- ``alone, 2 threads``: one process, nothing beside it (a serial search's trial);
- ``alone, 1 thread``: one process with one thread, nothing beside it;
- ``side by side, 1 thread``: two processes at once, each pinned to its own core
  (``os.sched_setaffinity``), as two concurrent trials on this machine.

Three trainings: ``reglab`` is :func:`reglab.train.fit.fit` as a trial trains
(the loss decomposition on a training sample and the validation set at every
epoch's end), ``reglab, not deterministic`` the same with
``train.deterministic=false``, and ``tutorial`` the tutorials' ``model.fit`` on
in-memory arrays (no validation). The three settings and three trainings are
alternated within each round. Seconds per epoch are the median of the epochs
after the first (graph tracing); the ceiling is 2 x (two-thread epoch alone) /
(one-thread epoch side by side).

Results go to bench/results/epoch_threads.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.tune_benchmark import ROOT, environment, prepare

TRAININGS = ("reglab", "reglab-nondeterministic", "tutorial")
SETTINGS = ("alone-2", "alone-1", "side-by-side-1")


def child(training: str, epochs: int, cpu: int | None, out: str) -> None:
    """One training in this process; appends its seconds per epoch to ``out``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import keras
    import numpy as np

    from reglab.config.compose import load_params
    from reglab.data.inputs import as_inputs
    from reglab.data.prepare import dataset_classes
    from reglab.train.fit import fit, one_hot
    from reglab.train.run import load_training_data, prepare_model

    config = load_params(Path("params.yaml"))
    if training == "reglab-nondeterministic":
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, deterministic=False)
        )
    train, validation = load_training_data(config.paths.processed, config.data)
    model = prepare_model(config, config.run_recipe("baseline", 42), 42, train[0].shape[1:])
    classes = dataset_classes(config.paths.processed, config.data).num_classes
    seconds: list[float] = []
    if training.startswith("reglab"):
        fit(
            model, train, validation,
            num_classes=classes, epochs=epochs, batch_size=config.train.batch_size,
            shuffle=True, seed=42, label=training,
            train_probe_size=config.train.train_probe_size,
            predict_batch_size=config.evaluation.batch_size,
            hooks=[lambda epoch, row: seconds.append(row["epoch_seconds"])],
        )  # fmt: skip
    else:
        inputs = as_inputs(train[0])
        x = inputs[np.arange(len(inputs))]  # read and scaled, in memory
        y = one_hot(np.asarray(train[1]), classes)

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self.began = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                seconds.append(time.perf_counter() - self.began)

        model.fit(
            x, y, batch_size=config.train.batch_size, epochs=epochs, callbacks=[Timer()], verbose=0
        )
    with open(out, "a") as handle:
        handle.write(json.dumps({"seconds": seconds}) + "\n")


def launch(
    project: Path, training: str, epochs: int, threads: int, cpu: int | None, out: Path, errors
) -> subprocess.Popen:
    """One training process with ``threads`` TensorFlow threads, on core ``cpu`` if given;
    its output (TensorFlow's start-up lines) goes to ``errors``, a file, so that a full
    pipe never stalls a training."""
    env = environment()
    env.update(
        TF_NUM_INTRAOP_THREADS=str(threads),
        TF_NUM_INTEROP_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "bench.epoch_threads", "--child", training]
    command += ["--epochs", str(epochs), "--out", str(out)]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    return subprocess.Popen(command, cwd=project, env=env, stdout=errors, stderr=errors)


def measure(project: Path, training: str, setting: str, epochs: int) -> list[float]:
    """Median seconds per epoch (after the first) of each process of one setting."""
    side_by_side = setting == "side-by-side-1"
    cpus = (0, 1) if side_by_side else (None,)
    threads = 1 if side_by_side else int(setting[-1])
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as files:
        out = Path(tmp, "seconds.jsonl")
        logs = [files.enter_context(Path(tmp, f"{n}.log").open("w+")) for n in range(len(cpus))]
        processes = [
            launch(project, training, epochs, threads, cpu, out, log)
            for cpu, log in zip(cpus, logs, strict=True)
        ]
        for process, log in zip(processes, logs, strict=True):
            if process.wait() != 0:
                log.seek(0)
                print(log.read(), file=sys.stderr)
                raise SystemExit(f"{training} {setting}: the training process failed (above)")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [round(statistics.median(row["seconds"][1:]), 4) for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.epoch_threads")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", help="make the project in this folder and keep it")
    parser.add_argument("--child", choices=TRAININGS, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.epochs, args.cpu, args.out)
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench.epoch_threads needs two cores to pin two trainings to")
    measured: dict[str, dict[str, list[float]]] = {t: {s: [] for s in SETTINGS} for t in TRAININGS}
    with tempfile.TemporaryDirectory(prefix="reglab-epoch-threads-") as tmp:
        project = Path(args.keep or tmp)
        prepare(project)
        for round_ in range(args.rounds):
            # Alternated: each round runs the trainings and settings in another order.
            trainings = TRAININGS if round_ % 2 == 0 else TRAININGS[::-1]
            for training in trainings:
                settings = SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]
                for setting in settings:
                    values = measure(project, training, setting, args.epochs)
                    measured[training][setting] += values
                    print(f"round {round_ + 1} {training:24s} {setting:15s} {values}", flush=True)
    summary = {}
    for training, settings in measured.items():
        alone2, alone1, side = (statistics.median(settings[s]) for s in SETTINGS)
        summary[training] = {
            "seconds_per_epoch": {s: round(statistics.median(v), 3) for s, v in settings.items()},
            "two_threads_over_one": round(alone1 / alone2, 2),
            "side_by_side_over_alone_one_thread": round(side / alone1, 2),
            "ceiling_epochs_per_hour": round(2 * alone2 / side, 2),
        }
    results = {
        "command": "python -m bench.epoch_threads " + " ".join(argv or sys.argv[1:]),
        "cpus": os.cpu_count(),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "measured": measured,
        "summary": summary,
    }
    out = ROOT / "bench/results/epoch_threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| training | 2 threads alone | 1 thread alone | 1 thread side by side | ceiling |")
    for training, row in summary.items():
        s = row["seconds_per_epoch"]
        print(
            f"| {training} | {s['alone-2']} | {s['alone-1']} | {s['side-by-side-1']} "
            f"| {row['ceiling_epochs_per_hour']}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
