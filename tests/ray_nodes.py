"""A Ray cluster for the search tests, started here on 127.0.0.1 and stopped by
process id even when a test fails, and the helpers those tests share."""

from __future__ import annotations

import contextlib
import csv
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from reglab.core.net import free_port
from tests.conftest import DIGITS

BIN = Path(sys.executable).parent


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


def ray_cli(temp_dir: Path) -> list[str]:
    """This interpreter's `ray` command, run from a path that needs no shell quoting.

    A node's processes run Ray's own files from the interpreter's folder: its client
    server through `bash -c` with the path unquoted, its jemalloc through LD_PRELOAD
    (split on spaces). From a venv in a folder such as "my proj" `ray start --block`
    stops at once, so such a venv is run through a symlink in ``temp_dir``.
    """
    python = Path(sys.executable)
    if shlex.quote(sys.prefix) != sys.prefix:
        alias = temp_dir / "venv"
        alias.symlink_to(sys.prefix, target_is_directory=True)
        python = alias / python.relative_to(sys.prefix)
    return [str(python), "-m", "ray.scripts.scripts"]


class RayNode:
    """`ray start --block`, in its own session: a head, or a node joining ``join``."""

    def __init__(self, num_cpus: int = 1, join: str | None = None):
        self.port = free_port()
        self.address = join or f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: socket paths
        where = [f"--address={join}"] if join else ["--head", f"--port={self.port}"]
        command = [*ray_cli(Path(self.temp_dir)), "start", "--block", *where]
        command += [f"--num-cpus={num_cpus}"]
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


def make_project(root: Path, overrides: list[str], data: Path) -> Path:
    """A project folder: params.yaml for digits with ``overrides``, the prepared data copied."""
    from reglab.config.compose import compose, to_yaml

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
