"""The config: composition of the real conf/, params.yaml freshness, validation errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reglab.config.checks import ConfigError
from reglab.config.compose import compose, load_params, to_yaml
from reglab.config.schema import validate
from tests.conftest import PROJECT_ROOT


def test_committed_params_yaml_is_the_composition_of_conf():
    committed = (PROJECT_ROOT / "params.yaml").read_text()
    assert committed == to_yaml(compose()), "params.yaml is stale: run `make params`"


def test_default_config_has_the_five_default_variants():
    config = validate(compose())
    assert list(config.variants) == ["baseline", "l1", "l2", "l1_l2", "dropout"]
    assert config.variants["baseline"].kernel.l1 == 0.0
    assert config.variants["baseline"].kernel.l2 == 0.0
    assert config.variants["l2"].kernel.l2 > 0
    assert config.variants["l1"].kernel.l1 > 0
    assert config.variants["l1_l2"].kernel.l1 > 0 and config.variants["l1_l2"].kernel.l2 > 0
    assert 0 < config.variants["dropout"].dropout.dense_rate < 1
    assert config.data.name == "fashion_mnist"
    assert config.data.train_size == 1000
    assert config.data.validation_size == 2000
    assert config.tracking.uri == "sqlite:///mlflow.db"


def test_overrides_reach_one_variant_only():
    config = validate(compose(["variants.l2.kernel.l2=0.05", "train.epochs=3"]))
    assert config.variants["l2"].kernel.l2 == 0.05
    assert config.variants["l1_l2"].kernel.l2 != 0.05
    assert config.train.epochs == 3


def test_a_variant_can_be_added_from_the_command_line():
    config = validate(compose(["+regularizer@variants.extra_l1=l1"]))
    assert config.variants["extra_l1"].kernel.l1 == config.variants["l1"].kernel.l1


def test_full_preset_uses_all_training_images():
    assert validate(compose(["experiment=full"])).data.train_size is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("variants.l2.kernel.l2=-0.1", "variants.l2.kernel.l2=-0.1: must be >= 0"),
        (
            "variants.dropout.dropout.dense_rate=1.0",
            "variants.dropout.dropout.dense_rate=1.0: must be < 1",
        ),
        (
            "variants.dropout.dropout.conv_rate=-0.2",
            "variants.dropout.dropout.conv_rate=-0.2: must be >= 0",
        ),
        ("train.epochs=0", "train.epochs=0: must be >= 1"),
        ("optimizer.name=adagrad", "optimizer.name='adagrad': must be one of"),
    ],
)
def test_bad_values_name_the_key_and_the_value(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose([override]))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_key_in_params_is_rejected_with_its_name():
    raw = OmegaConf.to_container(compose())
    raw["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        validate(raw)


def test_unknown_group_option_is_one_clear_error():
    with pytest.raises(ConfigError, match="regularizer") as error:
        compose(["+regularizer@variants.x=no_such_recipe"])
    assert "no_such_recipe" in str(error.value)


def test_unknown_variant_is_named(tmp_path):
    config = validate(compose())
    with pytest.raises(ConfigError, match="variant='l3': unknown"):
        config.variant("l3")


def run_check(root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reglab.stages.check"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.mark.slow
def test_the_check_stage_refuses_a_hand_edited_params_yaml_naming_the_key(tmp_path):
    (tmp_path / "conf").symlink_to(PROJECT_ROOT / "conf")
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(compose()).replace("epochs: 20", "epochs: 3"))
    refused = run_check(tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: params.yaml is not the composition of conf/ (train.epochs is 3 in params.yaml "
        "but 20 in conf/); run `make params` to compose it, or set "
        "REGLAB_ALLOW_STALE_PARAMS=1 to use it as it is"
    ]
    assert not (tmp_path / ".reglab").exists()
    allowed = run_check(tmp_path, REGLAB_ALLOW_STALE_PARAMS="1")
    assert allowed.returncode == 0, allowed.stderr
    assert "used as it is" in allowed.stderr
    # Under `dvc exp run -S`, the composition has overrides on purpose.
    assert run_check(tmp_path, DVC_EXP_NAME="exp-1").returncode == 0
    params.write_text(to_yaml(compose()))
    fresh = run_check(tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / ".reglab/params-checked").read_text().startswith("params.yaml is valid")


def test_freshness_is_checked_where_asked_and_validation_always(tmp_path):
    """The check stage (check_fresh) compares params.yaml with conf/; the stages after it
    only validate: DVC runs check first whenever params.yaml or conf/ changed."""
    import shutil

    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf")
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(compose()))
    assert load_params(params, check_fresh=True).train.epochs == 20
    train = tmp_path / "conf/train/default.yaml"
    train.write_text(train.read_text() + "epochs: 21\n")
    with pytest.raises(ConfigError, match="train.epochs is 20 in params.yaml but 21 in conf/"):
        load_params(params, check_fresh=True)
    assert load_params(params).train.epochs == 20  # validated, not compared
    assert load_params(params, check_fresh=True, experiment=True).train.epochs == 20
    params.write_text(params.read_text().replace("epochs: 20", "epochs: 0"))
    with pytest.raises(ConfigError, match="train.epochs=0"):
        load_params(params)


@pytest.mark.slow
def test_the_check_stage_says_how_to_get_back_from_a_rejected_value(tmp_path):
    (tmp_path / "conf").symlink_to(PROJECT_ROOT / "conf")
    (tmp_path / "params.yaml").write_text(to_yaml(compose()).replace("epochs: 20", "epochs: -1"))
    started = time.monotonic()
    result = run_check(tmp_path, DVC_EXP_NAME="exp-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: train.epochs=-1: must be >= 1; nothing was changed but "
        "params.yaml: run `make params` to compose it again from conf/, then fix the -S "
        "override"
    ]
    # Seconds, not a TensorFlow start-up (about 10 s here); the margin holds on a loaded machine.
    assert time.monotonic() - started < 60
    assert not (tmp_path / ".reglab").exists()


def test_compose_command_writes_nothing_on_bad_input(tmp_path):
    output = tmp_path / "params.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reglab",
            "compose",
            "variants.l1.kernel.l1=-1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: variants.l1.kernel.l1=-1.0: must be >= 0"
    )
    assert not output.exists()


def test_missing_params_file_says_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="make params"):
        load_params(Path(tmp_path, "params.yaml"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.activation=os.system", "model.activation='os.system': must be one of"),
        ("+variants.l2._target_=os.system", "_target_"),
        ("optimizer.name=builtins.eval", "optimizer.name='builtins.eval': must be one of"),
    ],
)
def test_config_cannot_name_arbitrary_python_callables(override, message):
    """Only the project's registered options: nothing from the command line is instantiated."""
    with pytest.raises(ConfigError, match=message):
        validate(compose([override]))


def test_seeds_are_one_list_and_the_split_has_its_own():
    config = validate(compose(["experiment=seeds"]))
    assert config.seeds == [42, 43, 44] and config.data.split_seed == 42
    assert validate(compose(["seeds=[7]"])).data.split_seed == 42
    with pytest.raises(ConfigError, match=r"^seeds=\[42, 42\]: seeds must be distinct and >= 0$"):
        validate(compose(["seeds=[42,42]"]))
    with pytest.raises(ConfigError, match=r"^seeds=\[\]: give at least one training seed"):
        validate(compose(["seeds=[]"]))
    config = validate(compose())
    with pytest.raises(ConfigError, match=r"seed 7 is not in seeds=\[42\]; add it to seeds"):
        config.run_recipe("l2", 7)
    with pytest.raises(ConfigError, match="variant='l3': unknown"):
        config.run_recipe("l3", 42)
    assert config.run_recipe("l2", 42) is config.variants["l2"]
