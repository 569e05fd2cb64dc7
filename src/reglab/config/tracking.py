"""How long a tracking server may keep a run waiting: MLflow's HTTP retry settings.

Pure arithmetic on ``tracking.server_wait_s``, with no MLflow import, so the entry
layer can set MLflow's variables before any library is loaded (MLflow reads its
retries from the environment only), and the stages that never track
(check, download, preprocess) do not depend on the tracking code.
"""

from __future__ import annotations

__all__ = ["request_timeout_s", "server_wait_settings"]


def request_timeout_s(wait_s: float) -> int:
    """Seconds one request to a tracking server waits for an answer, for a wait of ``wait_s``."""
    return max(1, min(10, int(wait_s)))


def server_wait_settings(wait_s: float) -> dict[str, str]:
    """MLflow's HTTP retry settings that bound a request's wait to about ``wait_s`` seconds
    (its defaults: minutes), as environment variables: MLflow has no other setting for them.

    urllib3 sleeps backoff * 2**(n - 1) before the n-th retry; with backoff 2 the
    retries fit in 2 * (2**retries - 1) seconds.
    """
    retries = 1
    while 2 * (2 ** (retries + 1) - 1) <= wait_s:
        retries += 1
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(request_timeout_s(wait_s)),
    }
