"""Every MLflow call of the project, in four modules by concern.

- :mod:`~reglab.tracking.store`: the tracking URI, the store's health, the bounded
  wait for a server, the experiment;
- :mod:`~reglab.tracking.runs`: the pipeline's parent run, a variant's run (new
  or resumed) and how it ends;
- :mod:`~reglab.tracking.records`: what a training run records (setup, data
  sets, epochs, histograms, the served model);
- :mod:`~reglab.tracking.reports`: what evaluation and the comparison add.

The names callers use are re-exported here: ``from reglab import tracking``.
"""

from reglab.tracking.records import (
    data_inputs,
    installed_packages,
    log_data_inputs,
    log_epoch,
    log_keras_model,
    log_missing_epochs,
    log_run_setup,
    log_trained_model,
    log_weight_histograms,
)
from reglab.tracking.reports import (
    log_comparison,
    log_evaluation,
    log_test_report,
    mlflow_metrics,
    parent_of,
)
from reglab.tracking.runs import (
    PIPELINE_TAG,
    end_orphaned_run,
    ending_run,
    git_state,
    pipeline_parent,
    resumed_run,
    span_parent,
    variant_run,
)
from reglab.tracking.store import (
    TrackingLost,
    TrackingUnavailable,
    check_reachable,
    check_sqlite_store,
    configure,
    flatten,
    lost_server_is,
    mark_model_training,
    resolve_uri,
)

__all__ = [
    "PIPELINE_TAG",
    "TrackingLost",
    "TrackingUnavailable",
    "check_reachable",
    "check_sqlite_store",
    "configure",
    "data_inputs",
    "end_orphaned_run",
    "ending_run",
    "flatten",
    "git_state",
    "installed_packages",
    "log_comparison",
    "log_data_inputs",
    "log_epoch",
    "log_evaluation",
    "log_test_report",
    "mlflow_metrics",
    "log_keras_model",
    "log_missing_epochs",
    "log_run_setup",
    "log_trained_model",
    "log_weight_histograms",
    "lost_server_is",
    "mark_model_training",
    "parent_of",
    "pipeline_parent",
    "resolve_uri",
    "resumed_run",
    "span_parent",
    "variant_run",
]
