"""Real servers for the tests, on 127.0.0.1 and free ports, always stopped afterwards.

Plain context managers (usable from any test or script) and pytest fixtures on
top of them:

- :func:`postgres_cluster`: a throwaway PostgreSQL cluster made with Debian's
  ``initdb`` and run with ``pg_ctl`` (as the ``postgres`` user when the tests
  run as root: PostgreSQL refuses to run as root), password authentication on
  TCP;
- :func:`s3_server`: moto's standalone S3-compatible server, the way DVC's own
  S3 plugin tests run it;
- :func:`mlflow_server`: ``mlflow server`` with any backend store, artifact
  destination, app (``basic-auth``) and environment.

Every server is stopped in a ``finally``, so a failing assertion never leaves
one running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from reglab.core.net import free_port

LOCALHOST = "127.0.0.1"
# moto accepts any key; these are what the tests' clients send (distinctive, so a test
# can search for them in everything that was logged).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDREGLAB01",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-7f3e9c",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- PostgreSQL ---------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(versions[0]).parent if versions else None


@dataclasses.dataclass
class Postgres:
    """A running cluster: connection details, and restart/stop through pg_ctl."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str
    password: str
    run_as: str | None  # the OS user that owns the cluster (None: this user)
    host: str = LOCALHOST

    def uri(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> str:
        connection = self.connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.uri(name)

    def query(self, sql: str, params: Sequence | None = None, database: str = "mlflow") -> list:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self.data_dir}"
        command = [
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir / "data"),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            *args,
        ]
        return _run_as(self.run_as, command, timeout=timeout + 10)

    def restart(self) -> None:
        """A fast restart: open connections are dropped, as in a real database failover."""
        self.pg_ctl("restart", "-m", "fast")

    def log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _run_as(user: str | None, command: list[str], timeout: float) -> subprocess.CompletedProcess:
    if user:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result


@contextlib.contextmanager
def postgres_cluster(
    user: str = "reglab", password: str = "pg-test-password"
) -> Iterator[Postgres]:
    """initdb + pg_ctl start in a temporary folder; stopped and removed on exit.

    Skips the test if PostgreSQL is not installed (``make services`` installs it).
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: `make services` (apt-get install postgresql)")
    run_as = None
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        run_as = "postgres"
    # Not under pytest's tmp_path: its parents are private to root, and the
    # cluster's owner must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="reglab-pg-"))
    if run_as:
        shutil.chown(root, user=run_as)
    (root / "pwfile").write_text(password + "\n")
    if run_as:
        shutil.chown(root / "pwfile", user=run_as)
    cluster = Postgres(bin_dir, root, free_port(), user, password, run_as)
    try:
        _run_as(
            run_as,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                user,
                f"--pwfile={root / 'pwfile'}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
            ],
            timeout=120,
        )
        (root / "pwfile").unlink()
        cluster.pg_ctl("start")
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.pg_ctl("stop", "-m", "immediate", timeout=30)
        shutil.rmtree(root, ignore_errors=True)


# --- S3 (moto) ------------------------------------------------------------------------------


@dataclasses.dataclass
class S3:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]


@contextlib.contextmanager
def s3_server(buckets: Sequence[str] = ()) -> Iterator[S3]:
    """moto's S3 on 127.0.0.1 and a free port, with the given buckets (names >= 3 chars)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOCALHOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3(f"http://{host}:{port}")
        for bucket in buckets:
            s3.create_bucket(bucket)
        yield s3
    finally:
        server.stop()


# --- mlflow server ----------------------------------------------------------------------------


@dataclasses.dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(uri: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            if process.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + log_path.read_text()) from None
            time.sleep(0.2)
    raise RuntimeError("mlflow server did not answer /health:\n" + log_path.read_text())


@contextlib.contextmanager
def mlflow_server(
    root: Path,
    backend_store_uri: str,
    artifacts_destination: str,
    *,
    app_name: str | None = None,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    timeout: float = 180,
) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1 and a free port; terminated (then killed) on exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if app_name:
        command += ["--app-name", app_name]
    log_path = root / f"mlflow-server-{port}.log"
    # As the README's: without MLflow's GenAI job runner (eight more processes).
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env,
            cwd=root,
            start_new_session=True,  # the whole group (uvicorn workers) is stopped below
        )
    try:
        uri = f"http://{LOCALHOST}:{port}"
        wait_healthy(uri, process, log_path, timeout)
        yield MlflowServer(uri, process, log_path)
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    import signal

    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def basic_auth_config(
    path: Path, database_uri: str, admin_password: str, cache_ttl_s: int = 60
) -> Path:
    """A basic_auth.ini (MLFLOW_AUTH_CONFIG_PATH): users in ``database_uri``, READ by default.

    As the README's: a password checked once is trusted for ``cache_ttl_s`` seconds
    (MLflow checks each request's password with scrypt otherwise: about 0.3 s of CPU
    per request here, seconds under load).
    """
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_ttl_s}\n"
    )
    path.chmod(0o600)
    return path


def basic_auth_available() -> bool:
    """`--app-name basic-auth` needs Flask-WTF (the mlflow[auth] extra)."""
    import importlib.util

    return importlib.util.find_spec("flask_wtf") is not None


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server
