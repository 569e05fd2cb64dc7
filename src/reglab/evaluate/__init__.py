"""Test metrics: plain values, no MLflow, no plotting."""
