"""Headless Chromium (Debian's `chromium`) for the tests that look at a page."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

# Every host name unresolvable and every proxied request refused: a page may load only
# what a server on 127.0.0.1 (or a file) gives it.
OFFLINE = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


def chromium(*args: str, timeout: float = 90) -> str:
    """Headless Chromium's stdout. --virtual-time-budget lets the page's scripts run
    before the snapshot. Now and then a headless Chromium never ends (seen here on
    pages that load fine the next time): it is killed with its children and tried
    once more."""
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--virtual-time-budget=10000", *args]  # fmt: skip
    for _ in range(2):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            return process.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    pytest.fail(f"chromium did not finish within {timeout:g} s, twice: {' '.join(command)}")
