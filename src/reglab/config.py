"""The config: schema, composition of conf/ with Hydra, validation of params.yaml.

Humans edit ``conf/``; ``params.yaml`` is its composition (what DVC's Hydra
integration writes on ``dvc exp run``, and ``make params`` writes otherwise).
Every stage reads ``params.yaml`` through :func:`load_params`, which validates it
against the dataclasses below before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reglab.data.config import DataConfig
from reglab.recipes import ModelConfig, RegularizerConfig
from reglab.schema import ConfigError, bounded, check

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
PARAMS_FILE = "params.yaml"


@dataclass
class PathsConfig:
    raw: str = "data/raw"
    processed: str = "data/processed"
    models: str = "models"
    history: str = "reports/history"
    eval: str = "reports/eval"
    summary: str = "reports/summary.md"
    figures: str = "reports/figures"
    # Data behind `dvc plots show`: confusion matrices, learning curves, leaderboard.
    plots: str = "reports/plots"
    # Per-epoch training state for resuming a killed run (not a DVC output).
    checkpoints: str = ".reglab/checkpoints"


@dataclass
class OptimizerConfig:
    name: str = bounded("adam", choices=["adam", "adamw", "sgd", "rmsprop"])
    learning_rate: float = bounded(1e-3, gt=0)
    momentum: float = bounded(0.0, ge=0, lt=1)


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclass
class TrainConfig:
    epochs: int = bounded(20, ge=1)
    batch_size: int = bounded(32, ge=1)
    shuffle: bool = True
    # Seeded TensorFlow ops: the same seed gives the same weights, bit for bit.
    deterministic: bool = True
    # Keras dtype policy: float32, or mixed precision (float16 on GPUs, bfloat16
    # on TPUs and CPUs with bf16 units); the logits stay float32 either way.
    precision: str = bounded("float32", choices=PRECISIONS)
    # Training images measured each epoch with dropout off for train/data_loss.
    train_probe_size: int = bounded(512, ge=1)


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "reglab"
    log_model: bool = True
    registered_model_name: str | None = None
    histogram_bins: int = bounded(50, ge=2)
    # Kernel histograms at epoch 0, every N epochs and at the end.
    histogram_every: int = bounded(5, ge=1)
    # CPU and memory of the training process as MLflow system metrics.
    system_metrics: bool = False
    # |w| below this counts as zero in the sparsity statistics.
    sparsity_threshold: float = bounded(1e-3, gt=0)


@dataclass
class EvaluationConfig:
    batch_size: int = bounded(512, ge=1)
    calibration_bins: int = bounded(15, ge=1)


@dataclass
class Config:
    seed: int = bounded(42, ge=0)
    # More seeds for every variant (train_seed / evaluate_seed stages, models/<variant>@<seed>):
    # the leaderboard then shows mean ± std over [seed, *extra_seeds].
    extra_seeds: list[int] = field(default_factory=list)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: dict[str, RegularizerConfig] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @property
    def seeds(self) -> list[int]:
        return [self.seed, *self.extra_seeds]

    def validate(self) -> None:
        if len(set(self.seeds)) != len(self.seeds) or any(seed < 0 for seed in self.seeds):
            raise ConfigError(
                f"extra_seeds={self.extra_seeds}: seeds must be distinct, >= 0 "
                f"and differ from seed={self.seed}"
            )
        if not self.variants:
            raise ConfigError("variants: empty; compose at least one regularizer recipe")
        for name in self.variants:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(
                    f"variants.{name}: a variant name may hold only letters, digits, '_' and '-'"
                )

    def variant(self, name: str) -> RegularizerConfig:
        if name not in self.variants:
            raise ConfigError(
                f"variant={name!r}: unknown; choose one of {sorted(self.variants)} "
                "or add it under variants in conf/"
            )
        return self.variants[name]


def _one_line(error: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines; keep the key and the reason."""
    reason = str(error).splitlines()[0].strip()
    key = getattr(error, "full_key", None)
    value = getattr(error, "value", None)
    if key:
        shown = f"{key}={value!r}" if value is not None else key
        return f"{shown}: {reason}"
    return reason


def validate(raw: dict[str, Any] | DictConfig) -> Config:
    """Turn a plain composed config into a checked :class:`Config`, or raise ConfigError."""
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, raw)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    assert isinstance(config, Config)  # noqa: S101 - OmegaConf's contract
    check(config)
    return config


def conf_dir() -> Path:
    """The project's conf/: the one in the working folder (where DVC runs), else ours."""
    local = Path.cwd() / "conf"
    return local if (local / "config.yaml").exists() else CONF_DIR


def compose(overrides: list[str] | None = None, config_dir: Path | None = None) -> DictConfig:
    """Compose conf/ with Hydra overrides, exactly as DVC's Hydra integration does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(config_dir or conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    except HydraException as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    OmegaConf.resolve(cfg)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The same text DVC writes to params.yaml."""
    return OmegaConf.to_yaml(cfg)


def as_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(config: Config) -> str:
    text = json.dumps(as_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_params(path: str | Path = PARAMS_FILE, check_fresh: bool = True) -> Config:
    """Read and validate params.yaml. Warns loudly if it is not the composition of conf/."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `make params` to compose it from conf/")
    raw = OmegaConf.load(path)
    config = validate(raw)
    if check_fresh:
        warn_if_stale(raw, path)
    return config


def warn_if_stale(raw: DictConfig, path: Path) -> bool:
    """params.yaml edited by hand (or conf/ changed since) is worth a loud warning.

    A `dvc exp run -S ...` composes with overrides, so it differs from the plain
    composition on purpose; DVC says so through DVC_EXP_NAME and the check is skipped.
    """
    conf_dir = path.resolve().parent / "conf"
    if os.environ.get("DVC_EXP_NAME") or not conf_dir.is_dir():
        return False
    try:
        fresh = compose(config_dir=conf_dir)
    except ConfigError as error:
        log.warning("conf/ does not compose (%s); params.yaml cannot be checked", error)
        return False
    if OmegaConf.to_container(fresh) != OmegaConf.to_container(raw):
        log.warning(
            "STALE CONFIG: %s differs from the composition of conf/; "
            "run `make params` (or use `dvc exp run -S ...`) so they agree",
            path,
        )
        return True
    return False


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 is not what a user expects
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reglab.config")
    sub = parser.add_subparsers(dest="command", required=True)
    compose_cmd = sub.add_parser("compose", help="compose conf/ (+ overrides) into params.yaml")
    compose_cmd.add_argument("overrides", nargs="*")
    compose_cmd.add_argument("--output", default=PARAMS_FILE)
    check_cmd = sub.add_parser("check", help="validate params.yaml and compare it with conf/")
    check_cmd.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "compose":
            cfg = compose(args.overrides)
            validate(cfg)
            write_atomic(Path(args.output), to_yaml(cfg))
            log.info("wrote %s", args.output)
        else:
            config = load_params(args.params, check_fresh=False)
            stale = warn_if_stale(OmegaConf.load(args.params), Path(args.params))
            log.info(
                "%s is valid: %d variants %s",
                args.params,
                len(config.variants),
                sorted(config.variants),
            )
            return 1 if stale else 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
