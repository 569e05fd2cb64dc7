"""Keep credentials out of the tracking store, the artifacts and the logs.

A run logs its whole config (params, ``config.json``), the tracking URI it used
(``run.json``) and log lines. Any of them may hold a password: a database URI
``postgresql://user:PASSWORD@host/db`` in ``tracking.uri``, an HTTP URI with
``user:password@``, or the value of a credential variable that some library
echoes. :func:`redact` replaces all of these with ``***`` before they are
written anywhere; :func:`install_log_filter` applies it to every log line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Variables whose values are credentials: never logged, wherever they turn up.
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PGPASSWORD",
    "DATABASE_URL",
)

# scheme://user:password@host -> scheme://user:***@host (any scheme: postgresql+psycopg2, http...)
_URI_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<password>[^@/\s]+)@"
)
# password=... in a query string or a libpq key/value string
_KEY_VALUE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|secret|token|access_key|secret_key)=)(?P<value>[^&\s]+)",
    re.IGNORECASE,
)
# Shorter values would mask ordinary words; no real credential is this short.
_MIN_SECRET_LENGTH = 4


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """The credential values set in ``environ``, longest first."""
    values = {environ[name] for name in SECRET_VARIABLES if environ.get(name)}
    # A password inside a URI held in the environment is a secret too.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "DATABASE_URL"):
        match = _URI_PASSWORD.search(environ.get(name, ""))
        if match:
            values.add(match["password"])
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def environment_secrets() -> list[str]:
    """The credential values set in this process's environment, longest first.

    The one read of the environment outside the entry layer (a named exception in
    tests/test_code_layout.py): credentials are masked in every process that logs,
    a search's Ray workers included, which run no entry point of the project, and
    in every log line, whichever library writes it; neither can be handed them.
    """
    return secret_values(os.environ)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with URI passwords, ``password=`` values and credential values masked."""
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['head']}{MASK}", text)
    for value in [*environment_secrets(), *extra]:
        if value and len(value) >= _MIN_SECRET_LENGTH:
            text = text.replace(value, MASK)
    return text


def redact_values(values: Any) -> Any:
    """A nested structure (a config, params) with every string redacted."""
    if isinstance(values, str):
        return redact(values)
    if isinstance(values, Mapping):
        return {key: redact_values(value) for key, value in values.items()}
    if isinstance(values, list | tuple):
        return type(values)(redact_values(value) for value in values)
    return values


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's final message (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's business, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Redact every line that the root logger's and MLflow's handlers write.

    Called once MLflow is imported (it installs its own handler on "mlflow").
    """
    for logger in (logging.getLogger(), logging.getLogger("mlflow")):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
