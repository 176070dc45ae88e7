"""The training settings are declared once, on TrainConfig's fields: the trainer node's
parameters and the `train` command's options are made from them, and config/trainer.yaml only
names fields or the node's own parameters."""
import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from robot_imitation.cli import build_parser
from robot_imitation.learning.config import TrainConfig
from robot_imitation.settings import SettingError, default_of, flag_of

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
# settings deliberately left off a surface, each with the reason (none today)
NOT_A_NODE_PARAMETER: dict = {}
NOT_A_COMMAND_LINE_OPTION: dict = {}
# the options the train command had before its options were made from TrainConfig
FORMER_FLAGS = ["--steps", "--batch-size", "--lr", "--hidden", "--head", "--chunk", "--seed",
                "--device", "--eval-every", "--eval-episodes", "--task", "--patience",
                "--sources", "--robot", "--include-interrupted"]


def trainer_parameters() -> dict:
    from robot_imitation.nodes.trainer_node import TrainerNode

    return {p.name: p for p in TrainerNode.PARAMETERS}


def train_options() -> dict:
    """{flag: argparse action} of `robot-imitation train`."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    return {flag: action for action in train._actions for flag in action.option_strings}


def test_trainer_yaml_names_settings_or_the_nodes_own_parameters():
    from robot_imitation.nodes.trainer_node import NODE_ONLY, NODE_ONLY_AFTER

    own = {p.name for p in NODE_ONLY + NODE_ONLY_AFTER}
    assert not own & set(FIELDS), "a node-only parameter shadows a TrainConfig field"
    params = yaml.safe_load((ROOT / "config" / "trainer.yaml").read_text())
    keys = set(params["trainer"]["ros__parameters"])
    assert keys <= set(FIELDS) | own, sorted(keys - set(FIELDS) - own)
    # and the file sets every setting (a reference of all of them), at its default
    table = trainer_parameters()
    assert set(FIELDS) - set(NOT_A_NODE_PARAMETER) <= keys, sorted(set(FIELDS) - keys)
    for name in FIELDS:
        value = params["trainer"]["ros__parameters"][name]
        assert table[name].setting_value(value) == default_of(TrainConfig, name), name


def test_node_parameters_come_from_the_fields():
    table = trainer_parameters()
    for name in FIELDS:
        if name in NOT_A_NODE_PARAMETER:
            continue
        assert name in table, f"TrainConfig.{name} is no trainer parameter"
        param, field = table[name], TrainConfig.__dataclass_fields__[name]
        assert param.description == field.metadata["help"] and param.description, name
        assert param.setting_value(param.default) == default_of(TrainConfig, name), name
        assert param.limits is field.metadata["limits"], name
    # the field's limits hold at run time: the parameter service refuses what TrainConfig does
    assert table["device"].problem("gpu") == ("parameter device='gpu': must be auto, cpu, "
                                              "cuda or cuda:N")
    assert "non-empty list" in table["hidden"].problem([])
    assert "positive integers" in table["hidden"].problem([64, 0])
    assert table["lr"].problem(-0.1) == "parameter lr=-0.1: must be a number in [0, 1]"
    assert table["policy_config"].setting_value("{width: 8}") == {"width": 8}
    assert table["policy_config"].setting_value("") == {}
    assert "YAML mapping" in table["policy_config"].problem("[1, 2]")
    assert table["policy"].choices and "mlp" in table["policy"].choices
    assert table["task"].setting_value("") is None and table["sources"].setting_value([""]) == []


def test_train_options_come_from_the_fields():
    options = train_options()
    for name in FIELDS:
        if name in NOT_A_COMMAND_LINE_OPTION:
            continue
        flag = flag_of(TrainConfig, name)
        assert flag in options, f"TrainConfig.{name} has no option {flag}"
        assert options[flag].dest == name
        assert TrainConfig.__dataclass_fields__[name].metadata["help"] in options[flag].help
    for flag in FORMER_FLAGS:
        assert flag in options, flag
    assert "--policy" in options and "--policy-option" in options
    assert "--no-amp" in options


def test_given_options_override_the_config_file(tmp_path):
    from robot_imitation.settings import given_arguments

    args = build_parser().parse_args(
        ["train", "ds", "--steps", "7", "--no-amp", "--include-interrupted", "--policy-option",
         "num_classes=3", "--policy-option", "keypoints=16", "--head", "categorical",
         "--hidden", "32,16"])
    settings = given_arguments(args, TrainConfig, {"steps": 100, "lr": 0.01,
                                                   "policy_config": {"keypoints": 8}})
    cfg = TrainConfig.from_dict(settings)
    assert (cfg.steps, cfg.lr, cfg.amp, cfg.include_interrupted) == (7, 0.01, False, True)
    assert cfg.policy_config == {"keypoints": 16, "num_classes": 3}
    assert cfg.hidden == [32, 16] and cfg.head == "categorical"


@pytest.mark.parametrize("text,says", [("width", "must be KEY=VALUE, got width"),
                                       ("=3", "must be KEY=VALUE, got =3")])
def test_a_bad_policy_option_is_refused_by_the_parser(text, says, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "ds", "--policy-option", text])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_chunk_and_learning_rate_left_at_0_take_the_familys_defaults():
    for family, chunk, lr in (("mlp", 1, 1e-3), ("act", 8, 1e-3), ("diffusion", 8, 3e-3)):
        cfg = TrainConfig(policy=family)
        assert (cfg.chunk, cfg.lr) == (chunk, lr), family
        # a value given is kept
        assert (TrainConfig(policy=family, chunk=3, lr=5e-4).chunk,
                TrainConfig(policy=family, lr=5e-4).lr) == (3, 5e-4)


def test_a_float_written_1e_3_is_a_float_in_every_surface(tmp_path):
    """PyYAML reads YAML 1.1, where a float needs a dot: ``lr: 1e-3`` in a config file, and
    ``--policy-option kl_weight=1e-3``, were the string '1e-3', refused as "must be a number"."""
    from robot_imitation.cli import _read_yaml
    from robot_imitation.nodes.trainer_node import TrainerNode
    from robot_imitation.settings import given_arguments

    config = tmp_path / "train.yaml"
    config.write_text("policy: act\nlr: 1e-3\npolicy_config: {kl_weight: 5E+1}\n")
    args = build_parser().parse_args(["train", "ds", "--policy-option", "dropout=2.5e-1",
                                      "--weight-decay", "1e-4"])
    cfg = TrainConfig.from_dict(given_arguments(args, TrainConfig, _read_yaml(config)))
    assert (cfg.lr, cfg.weight_decay) == (1e-3, 1e-4)
    assert cfg.policy_config == {"kl_weight": 50.0, "dropout": 0.25}
    # the trainer node's policy_config parameter (a YAML mapping in a string)
    param = next(p for p in TrainerNode.PARAMETERS if p.name == "policy_config")
    assert param.setting_value("{kl_weight: 1e-3}") == {"kl_weight": 1e-3}
    # text that only looks like a number stays text; whole numbers stay whole
    assert _read_yaml_text(tmp_path, "a: 1e\nb: 3\nc: '1e-3'\n") == {"a": "1e", "b": 3,
                                                                    "c": "1e-3"}


def _read_yaml_text(tmp_path, text: str):
    from robot_imitation.cli import _read_yaml

    path = tmp_path / "other.yaml"
    path.write_text(text)
    return _read_yaml(path)


def test_a_key_given_twice_in_a_yaml_file_is_refused_with_its_line(tmp_path):
    """`lr` written twice in a `train --config` file (one forgotten): PyYAML kept the last
    without a word, so the run trained at the other rate; YAML forbids it. Now one line with
    the line of each; a mapping's own key after a `<<` merge still overrides the merged one."""
    import subprocess
    import sys

    from robot_imitation.paths import read_yaml

    config = tmp_path / "train.yaml"
    config.write_text("steps: 10\nlr: 0.001\nbatch_size: 8\nseed: 3\nval_fraction: 0.2\n"
                      "lr: 0.5\n")
    run = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "train",
                          str(tmp_path / "ds"), "--config", str(config), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr == (
        f"robot-imitation train: {config}, line 6, column 1: not valid YAML: the key 'lr' is "
        "given twice (first on line 2)\n"), run.stderr
    assert not (tmp_path / "out").exists()
    nested = tmp_path / "nested.yaml"
    nested.write_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(ValueError, match=r"line 4, column 3: not valid YAML: the key 'b' is "
                                         r"given twice \(first on line 2\)"):
        read_yaml(nested)
    assert _read_yaml_text(tmp_path, "base: &x {p: 1, q: 2}\nb:\n  <<: *x\n  q: 3\n") == {
        "base": {"p": 1, "q": 2}, "b": {"p": 1, "q": 3}}


@pytest.mark.parametrize("settings,says", [
    ({"head": "mse", "policy_config": {"num_classes": 10}},
     "mlp: num_classes 10 is a setting of the categorical head, and the head is mse"),
    ({"head": "gaussian", "modes": 7},
     "mlp: modes 7 is a setting of the gmm head, and the head is gaussian"),
    ({"head": "categorical"},
     "mlp: the categorical head needs num_classes of 2 or more (classes per action value), "
     "not 0"),
])
def test_a_heads_setting_without_its_head_is_refused(settings, says):
    """``num_classes`` with the mse head (``--policy-option num_classes=10``), or ``--modes``
    without the gmm head, trained the other head without a word: the setting changed nothing.
    The categorical head without ``num_classes`` was refused only when the network was built,
    after the dataset. Now each is refused with the settings; the pairs that belong together
    pass, and a stored checkpoint's config is not checked this way (it keeps loading)."""
    with pytest.raises(SettingError) as err:
        TrainConfig(**settings)
    assert str(err.value).startswith(says), str(err.value)
    TrainConfig(head="categorical", policy_config={"num_classes": 3})
    TrainConfig(head="gmm", modes=7)
    from robot_imitation.policies.mlp.config import MlpConfig

    stored = MlpConfig(low_dim_keys=["x"], low_dim_sizes=[2], action_dim=1, head="mse",
                       num_classes=3)
    assert stored.num_classes == 3


def test_a_heads_setting_without_its_head_is_one_line_from_train(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "train",
                           str(tmp_path / "no_dataset"), "--out", str(out), "--head", "mse",
                           "--policy-option", "num_classes=10"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "num_classes 10 is a setting of the categorical head" in \
        lines[0], proc.stderr
    assert not out.exists()
