"""The config's typed schema and its validation.

Humans edit ``conf/``; ``params.yaml`` is its composition (:mod:`reglab.config.compose`).
:func:`validate` turns a composed config into a checked :class:`Config` before
any work starts: an unknown key or a value out of range is one line naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from reglab.config.checks import ConfigError, bounded, check
from reglab.config.data import DataConfig
from reglab.config.recipes import ModelConfig, RegularizerConfig
from reglab.core.digest import digest

log = logging.getLogger(__name__)


@dataclass
class PathsConfig:
    """Where each stage writes; dvc.yaml reads these through ${paths.*}."""

    raw: str = "data/raw"
    processed: str = "data/processed"
    models: str = "models"
    history: str = "reports/history"
    eval: str = "reports/eval"
    # The headline numbers DVC reads as metrics (`dvc metrics show`, `dvc exp show`);
    # the full evaluation report stays in ``eval``.
    metrics: str = "reports/metrics"
    summary: str = "reports/summary.md"
    figures: str = "reports/figures"
    # Data behind `dvc plots show`: confusion matrices, learning curves, leaderboard.
    plots: str = "reports/plots"
    # Kernel histograms of each trained model, written by evaluate for compare.
    weights: str = "reports/weights"
    # Per-epoch training state for resuming a killed run (not a DVC output).
    checkpoints: str = ".reglab/checkpoints"
    # Each trained model's MLflow run (id, store, resumed epoch): this machine's
    # records, kept out of DVC's outputs so that a model's hash is the same in every clone.
    runs: str = ".reglab/runs"
    # A search's best.yaml, trials.csv and figures: <tune>/<search>/.
    tune: str = "reports/tune"
    # Ray Tune's state of a search, to resume it after a kill (not a DVC output).
    tune_state: str = ".reglab/tune"
    # Written by the check stage, which every other stage depends on.
    check: str = ".reglab/params-checked"


@dataclass
class OptimizerConfig:
    name: str = bounded("adam", choices=["adam", "adamw", "sgd", "rmsprop"])
    learning_rate: float = bounded(1e-3, gt=0)
    momentum: float = bounded(0.0, ge=0, lt=1)


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclass
class TrainConfig:
    # With the data config's 1,000 training images, 20 epochs of batch 32 (Keras's
    # default batch): the baseline's validation data loss is lowest around epoch 10
    # and climbs by about 0.1 by epoch 20 while its training loss keeps falling, the
    # overfitting the tutorials show. bench/README.md has the measurements behind it.
    epochs: int = bounded(20, ge=1)
    batch_size: int = bounded(32, ge=1)
    shuffle: bool = True
    # Seeded TensorFlow ops: the same seed gives the same weights, bit for bit.
    deterministic: bool = True
    # Keras dtype policy: float32, or mixed precision (float16 on GPUs, bfloat16
    # on TPUs and CPUs with bf16 units); the logits stay float32 either way.
    precision: str = bounded("float32", choices=PRECISIONS)
    # Training images measured each epoch with dropout off, for train/data_loss
    # (a fixed seeded sample: 512 keep the cost near 1 % of an epoch).
    train_probe_size: int = bounded(512, ge=1)


@dataclass
class TrackingConfig:
    # MLFLOW_TRACKING_URI in the environment wins over this.
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "reglab"
    log_model: bool = True
    # Register every logged model under this name in the model registry (None: don't).
    registered_model_name: str | None = None
    histogram_bins: int = bounded(50, ge=2)
    # Kernel histograms at epoch 0, every N epochs and at the end.
    histogram_every: int = bounded(5, ge=1)
    # The histograms drawn as images (one per recorded epoch, and a start/end overlay)
    # beside their raw counts (weights/histograms.json, always logged). A search's
    # trials skip the drawing, over a second per run; its `_best` variant draws them.
    histogram_images: bool = True
    # CPU and memory of the training process as MLflow system metrics.
    system_metrics: bool = False
    # How long a request waits for a tracking server that stopped answering (MLflow's
    # own retries, bounded). Past it, a finished training keeps its outputs and the
    # same command, run again, logs what is missing into the same run.
    server_wait_s: float = bounded(30.0, gt=0)


@dataclass
class EvaluationConfig:
    # Images per prediction call, in evaluation and in training's loss decomposition.
    # On the 2-core CPU, 512 ran about 2x faster per image than 1,024 or 2,000
    # (activations that fit in cache).
    batch_size: int = bounded(512, ge=1)
    calibration_bins: int = bounded(15, ge=1)
    # |w| below this counts as zero in the sparsity statistics.
    sparsity_threshold: float = bounded(1e-3, gt=0)


# ------------------------------------------------------------ hyperparameter search
# What a search varies (conf/search/) and how it runs (conf/tune/); reglab.tune runs it.

# What a search can optimise, and which way: a column of the training history, at the
# weights the trial keeps (reglab.tune.trial.Reporter).
SEARCH_OBJECTIVES = {
    "val_data_loss": "min",
    "val_accuracy": "max",
    "val_ece": "min",
    "sparsity": "max",
}
# Objectives that say how good the model is; sparsity alone does not, and is a second one.
QUALITY_OBJECTIVES = ("val_data_loss", "val_accuracy", "val_ece")
SEARCH_SAMPLERS = ("tpe", "grid")
BEST_SUFFIX = "_best"


def _same_kind(current: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``current`` in a recipe: a bool for a bool, a number
    for a number (or an unset strength), a string for a string."""
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if current is None or isinstance(current, int | float):
        return isinstance(value, int | float)
    return isinstance(value, type(current))


@dataclass
class SearchParamConfig:
    """One searched recipe key (``kernel.l2``): a float range ``low``..``high``
    (``log``: log-uniform), or a list of ``choices``."""

    key: str = ""
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None


@dataclass
class SearchConfig:
    """One search space (``conf/search/<name>.yaml``)."""

    # The recipe every trial starts from, composed like a variant's recipe list.
    base: RegularizerConfig = field(default_factory=RegularizerConfig)
    params: list[SearchParamConfig] = field(default_factory=list)
    # One name of SEARCH_OBJECTIVES, or a list of them for a multi-objective search
    # (its Pareto front: [val_data_loss, sparsity], [val_accuracy, val_ece]); the first
    # is the one its `_best` variant is picked by (docs/search.md, "Two objectives").
    objective: Any = "val_data_loss"
    n_trials: int = bounded(12, ge=1)
    # Epochs per trial (ASHA stops the bad ones earlier); null: train.epochs, the epochs
    # the search's <search>_best variant is trained for. Fewer cannot see late overfitting.
    epochs: int | None = bounded(None, ge=1)
    # Optuna's sampler seed.
    seed: int = bounded(0, ge=0)

    @property
    def objectives(self) -> list[str]:
        """The objective names, the first being the one the best is picked by."""
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)

    @property
    def modes(self) -> list[str]:
        return [SEARCH_OBJECTIVES[name] for name in self.objectives]

    @property
    def multi(self) -> bool:
        """Several objectives: a Pareto front, no early stopping, no repeats."""
        return len(self.objectives) > 1

    @property
    def primary(self) -> str:
        return self.objectives[0]

    @property
    def mode(self) -> str:
        """The primary objective's direction."""
        return self.modes[0]

    def validate(self) -> None:
        names = self.objectives
        if not names or not all(isinstance(n, str) and n in SEARCH_OBJECTIVES for n in names):
            raise ValueError(
                f"objective={self.objective!r}: name one of {list(SEARCH_OBJECTIVES)}, "
                "or a list of them such as [val_data_loss, sparsity]"
            )
        if len(set(names)) < len(names):
            raise ValueError(f"objective={names}: an objective is named twice")
        if not any(name in QUALITY_OBJECTIVES for name in names):
            raise ValueError(
                f"objective={self.objective!r}: says nothing of the model's quality alone; "
                f"pair it with one of {list(QUALITY_OBJECTIVES)}, e.g. [val_data_loss, sparsity]"
            )

    def recipe(self, values: dict[str, Any]) -> RegularizerConfig:
        """The base recipe with ``values`` (recipe key -> value) set, checked like any recipe."""
        recipe = copy.deepcopy(self.base)
        for key, value in values.items():
            *parents, last = key.split(".")
            node = recipe
            for part in parents:
                node = getattr(node, part)
            current = getattr(node, last)
            if not _same_kind(current, value):
                raise ConfigError(f"{key}={value!r}: expected a value like {current!r}")
            setattr(node, last, value)
        check(recipe)
        return recipe

    def check_params(self, name: str) -> None:
        """Every parameter is a leaf of the base recipe with a non-empty range it accepts."""
        prefix = f"search_spaces.{name}.params"
        if not self.params:
            raise ConfigError(f"{prefix}=[]: name at least one recipe key to search")
        recipe = dataclasses.asdict(self.base)
        for index, spec in enumerate(self.params):
            at = f"{prefix}[{index}]"
            node: Any = recipe
            for part in spec.key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(
                        f"{at}.key={spec.key!r}: not a key of the recipe; "
                        "name a recipe key such as kernel.l2 or dropout.dense_rate"
                    )
                node = node[part]
            if isinstance(node, dict):
                raise ConfigError(f"{at}.key={spec.key!r}: a section, not a value")
            if [other.key for other in self.params].count(spec.key) > 1:
                raise ConfigError(f"{at}.key={spec.key!r}: searched twice")
            if spec.choices is not None:
                if not spec.choices:
                    raise ConfigError(f"{at}.choices=[] for {spec.key}: empty")
                candidates = list(spec.choices)
            else:
                if spec.low is None or spec.high is None:
                    raise ConfigError(f"{at} ({spec.key}): give low and high, or choices")
                if not spec.low < spec.high:
                    raise ConfigError(
                        f"{at}.low={spec.low} >= high={spec.high} for {spec.key}: "
                        "the range is empty or inverted"
                    )
                if spec.log and spec.low <= 0:
                    raise ConfigError(
                        f"{at}.low={spec.low} for {spec.key}: a log range needs low > 0"
                    )
                if isinstance(node, bool) or not isinstance(node, int | float | None):
                    raise ConfigError(f"{at}.key={spec.key!r} holds {node!r}: use choices")
                candidates = [spec.low, spec.high]
            for value in candidates:
                try:
                    self.recipe({spec.key: value})
                except ConfigError as error:
                    raise ConfigError(f"{at} ({spec.key}={value!r}): {error}") from None


@dataclass
class TuneConfig:
    """How a search runs (what it searches is in ``search_spaces``)."""

    # host:port of a Ray head; null: RAY_ADDRESS if set, else a local Ray instance.
    address: str | None = None
    # Trials at once. 1 makes a seeded search repeat exactly (README: reproducibility).
    max_concurrent: int = bounded(2, ge=1)
    cpus_per_trial: float = bounded(1.0, gt=0)
    gpus_per_trial: float = bounded(0.0, ge=0)
    # TensorFlow threads per trial: two one-thread trials beat one two-thread trial on 2 cores.
    threads_per_trial: int = bounded(1, ge=1)
    # Overrides the search's own n_trials when set.
    n_trials: int | None = bounded(None, ge=1)
    # tpe: Optuna's seeded TPE. grid: every combination of the params' choices once,
    # each run in full (a multirun sweep on Ray).
    sampler: str = bounded("tpe", choices=SEARCH_SAMPLERS)
    # ASHA: every trial runs grace_period epochs; each rung keeps 1/reduction_factor.
    grace_period: int = bounded(1, ge=1)
    reduction_factor: int = bounded(2, ge=2)
    # After the trials: the best `finalists` completed trials are trained again under
    # `repeats` further seeds (the pipeline's first seed + 1, + 2, ...), not pruned;
    # the best is the best mean over its seeds. repeats=0: the single best trial.
    finalists: int = bounded(3, ge=1)
    repeats: int = bounded(2, ge=0)
    # A trial runs in a Ray worker that ran earlier trials, where one is free, not in a
    # new process each (docs/search.md, "Workers"). false: one new worker per trial,
    # for a user model that leaks state between trials, and the benchmark's "before".
    reuse_workers: bool = True
    # With a sqlite store and trials in parallel, trials log through a local
    # `mlflow server` the search starts (a serial search writes the file itself).
    tracking_server: bool = True


@dataclass
class Config:
    # Training seeds: every variant is trained under each (models/<variant>@<seed>);
    # with several, the leaderboard shows mean ± std over them. The data split has
    # its own seed (data.split_seed), so a seed here changes the training alone.
    seeds: list[int] = field(default_factory=lambda: [42])
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: dict[str, RegularizerConfig] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # The searches the pipeline runs (tune@<search>), each adding variant <search>_best.
    searches: list[str] = field(default_factory=list)
    search_spaces: dict[str, SearchConfig] = field(default_factory=dict)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def validate(self) -> None:
        try:
            self.data.check_source(self.paths.raw)
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None
        if not self.seeds:
            raise ConfigError("seeds=[]: give at least one training seed, e.g. seeds=[42]")
        if len(set(self.seeds)) != len(self.seeds) or any(seed < 0 for seed in self.seeds):
            raise ConfigError(f"seeds={self.seeds}: seeds must be distinct and >= 0")
        if not self.variants:
            raise ConfigError("variants: empty; compose at least one regularizer recipe")
        for name in self.variants:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(
                    f"variants.{name}: a variant name may hold only letters, digits, '_' and '-'"
                )
        for name, search in self.search_spaces.items():
            search.check_params(name)
        for name in self.searches:
            self.search(name)
            if name + BEST_SUFFIX in self.variants:
                raise ConfigError(
                    f"searches: {name!r} adds variant {name + BEST_SUFFIX!r}, "
                    "which variants already has; rename one of them"
                )

    def search(self, name: str) -> SearchConfig:
        if name not in self.search_spaces:
            raise ConfigError(
                f"search={name!r}: unknown; choose one of {sorted(self.search_spaces)} "
                "or add conf/search/<name>.yaml"
            )
        return self.search_spaces[name]

    def variant(self, name: str) -> RegularizerConfig:
        if name not in self.variants:
            raise ConfigError(
                f"variant={name!r}: unknown; choose one of {sorted(self.variants)} "
                "or add it under variants in conf/"
            )
        return self.variants[name]

    def run_recipe(self, variant: str, seed: int) -> RegularizerConfig:
        """The recipe of the run ``variant@seed``; an unknown variant or seed fails here."""
        recipe = self.variant(variant)
        if seed not in self.seeds:
            raise ConfigError(f"seed {seed} is not in seeds={self.seeds}; add it to seeds")
        return recipe


def _one_line(error: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines; keep the key and the reason."""
    reason = str(error).splitlines()[0].strip()
    key = getattr(error, "full_key", None)
    if key and isinstance(error, MissingMandatoryValue):
        return f"{key}: required, and not set; set it (e.g. `-S '{key}=...'` or in conf/)"
    value = getattr(error, "value", None)
    if key:
        shown = f"{key}={value!r}" if value is not None else key
        return f"{shown}: {reason}"
    return reason


def validate(raw: dict[str, Any] | DictConfig) -> Config:
    """Turn a composed config into a checked :class:`Config`, or raise ConfigError.

    A composition is re-checked from its plain values: a key that Hydra's ``+``
    added to a typed node must not slip through.
    """
    if isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, raw)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    check(config)
    return config


@dataclass
class CommandLineConfig(Config):
    """The ad-hoc command line's config (conf/cli.yaml): the pipeline's, plus which
    variant ``reglab train`` trains (under each of ``seeds``)."""

    variant: str = "baseline"


def register_schema() -> None:
    """Put the schema in Hydra's ConfigStore: group ``schema``, ``pipeline``
    (:class:`Config`) and ``command_line`` (:class:`CommandLineConfig`).

    ``conf/config.yaml`` composes on top of it, so every YAML file states only
    what differs from the defaults here, and composition itself type-checks.
    :mod:`reglab.config.compose` registers it for the project's own composition;
    ``hydra_plugins/reglab_schema`` does it for DVC's (``dvc exp run -S``),
    which imports Hydra plugins from the repository root before composing.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="pipeline", node=Config, package="_global_")
    store.store(group="schema", name="command_line", node=CommandLineConfig, package="_global_")


def as_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(config: Config) -> str:
    """A digest of how a run trains: the tracking store's URI (this machine's, or the
    user's MLFLOW_TRACKING_URI) is left out, so that the hash in DVC's outputs is the
    same in every clone."""
    settings = as_dict(config)
    settings["tracking"] = {k: v for k, v in settings["tracking"].items() if k != "uri"}
    return digest(settings, 16)


# Config keys that say which searches run and how, not how a run trains.
SEARCH_KEYS = ("searches", "search_spaces", "tune")


def run_params(config: Config, variant: str, seed: int) -> dict[str, Any]:
    """What one run depends on: the config less the other variants and seeds."""
    params = dataclasses.asdict(config)
    for other in ("variants", "seeds", *SEARCH_KEYS):
        params.pop(other)
    params["variant"] = variant
    params["seed"] = seed
    params["regularizer"] = dataclasses.asdict(config.variants[variant])
    return params


def pipeline_key(config: Config, git_commit: str) -> str:
    """What every run of one pipeline shares: the config less variants and seeds, and the code."""
    shared = dataclasses.asdict(config)
    for own in ("variants", "tracking", "seeds", *SEARCH_KEYS):
        shared.pop(own)
    return digest({"config": shared, "git_commit": git_commit}, 16)
