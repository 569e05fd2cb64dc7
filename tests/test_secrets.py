"""Credentials are masked before anything is logged: URIs, key=value strings, variables."""

from __future__ import annotations

import logging

from reglab.tracking import flatten, secrets


def test_uri_passwords_are_masked_whatever_the_scheme():
    text = "postgresql+psycopg2://mlflow:S3cr3t-pw@db.internal:5432/mlflow and http://u:p4ss@h:5000"
    clean = secrets.redact(text)
    assert (
        clean == "postgresql+psycopg2://mlflow:***@db.internal:5432/mlflow and http://u:***@h:5000"
    )


def test_uris_without_credentials_and_ports_are_left_alone():
    text = "http://127.0.0.1:5000/#/experiments/1 s3://bucket/a@b sqlite:///mlflow.db"
    assert secrets.redact(text) == text


def test_key_value_passwords_are_masked():
    assert secrets.redact("host=db password=hunter22 user=x") == "host=db password=*** user=x"
    assert secrets.redact("https://h/x?token=abcd1234&y=1") == "https://h/x?token=***&y=1"


def test_values_of_credential_variables_are_masked_anywhere(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-planted")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-pass-123")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://a:uri-pass-9@h/db")
    text = "key wJalrXUtnFEMI-planted, pass team-pass-123, uri-pass-9"
    assert secrets.redact(text) == "key ***, pass ***, ***"


def test_credential_values_are_those_of_the_environment_given():
    environ = {
        "PGPASSWORD": "pg-secret-1",
        "MLFLOW_TRACKING_URI": "http://u:uri-pw-22@h:5000",
        "AWS_SESSION_TOKEN": "abc",  # too short to be a credential: ordinary words stay
        "HOME": "/home/someone-long",
    }
    assert secrets.secret_values(environ) == ["pg-secret-1", "uri-pw-22"]  # longest first


def test_nested_values_and_flattened_params_are_masked():
    config = {"tracking": {"uri": "postgresql://u:pw1234@h/db", "experiment": "reglab"}, "n": 3}
    assert secrets.redact_values(config) == {
        "tracking": {"uri": "postgresql://u:***@h/db", "experiment": "reglab"},
        "n": 3,
    }
    assert flatten(config)["tracking.uri"] == "postgresql://u:***@h/db"


def test_log_lines_are_masked(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTED0001")
    logger = logging.getLogger("reglab.test_secrets")
    handler = logging.StreamHandler()
    handler.addFilter(secrets.RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("connecting to %s with %s", "http://u:pw99@h", "AKIAPLANTED0001")
    finally:
        logger.removeHandler(handler)
    assert capsys.readouterr().err == "connecting to http://u:***@h with ***\n"
