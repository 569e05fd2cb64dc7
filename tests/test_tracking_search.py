"""The local tracking server of a search: stopped with the search, and, after a search
killed with SIGKILL, by the search started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from reglab.tracking.search import SERVER_FILE, served_store

pytestmark = pytest.mark.slow


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_server_left_by_a_killed_search_is_stopped_by_the_next(tmp_path):
    uri, state = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "state"
    state.mkdir()
    search = (
        "import sys, time\nfrom pathlib import Path\n"
        "from reglab.tracking.search import served_store\n"
        f"with served_store({uri!r}, Path({str(state)!r})) as store:\n"
        "    print(store.wait(), flush=True)\n"
        "    time.sleep(600)\n"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", search], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    left = None
    try:
        url = killed.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        left = json.loads((state / SERVER_FILE).read_text())["pid"]
        killed.send_signal(signal.SIGKILL)  # the search only: no exit path runs
        killed.wait()
        assert answers(url)  # its server lives on, in its own process group

        with served_store(uri, state) as store:
            assert not group_exists(left)  # stopped, with its workers
            assert store.wait() == url  # the same port: the trials' config is the same
            assert answers(url)
            serving = json.loads((state / SERVER_FILE).read_text())["pid"]
            assert serving != left
        assert not group_exists(serving) and not answers(url)
        assert json.loads((state / SERVER_FILE).read_text()) == {
            "pid": None,
            "port": int(url.rsplit(":", 1)[1]),
        }
    finally:
        killed.kill()
        killed.wait()
        if left is not None and group_exists(left):
            os.killpg(left, signal.SIGKILL)


def test_a_record_naming_another_process_stops_nothing(tmp_path):
    uri, state = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "state"
    state.mkdir()
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        (state / SERVER_FILE).write_text(json.dumps({"pid": other.pid, "port": 1}))
        from reglab.tracking.search import stop_left_server

        assert stop_left_server(state / SERVER_FILE, uri) == 1
        assert other.poll() is None  # not a server of this store: left alone
        assert stop_left_server(Path(tmp_path / "none.json"), uri) is None
    finally:
        other.kill()
        other.wait()
