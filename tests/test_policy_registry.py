"""Policy families by type: a family defined outside the package (tests/plugins/tiny_policy.py)
trains with the real trainer, saves, loads, runs on the inference backends that support it and
drives the policy node process, which finds it through an entry point; unknown types are one
line; mlp is what it was (same weights for the same seed, checkpoints without a type load as
mlp)."""
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from safetensors.torch import load_file
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from conftest import wait_for
from robot_imitation.deploy.backends import BackendError, select_backend
from robot_imitation.deploy.runtime import load_policy
from robot_imitation.learning.checkpoint import CheckpointError, load_checkpoint
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.learning.evaluation import observation_tensors
from robot_imitation.learning.trainer import TrainConfig, train
from robot_imitation.nodes.common import STATE_QOS
from robot_imitation.observation import ObservationAssembler
from robot_imitation.policies import (UnknownPolicyError, available_policies, policy_class,
                                      register_policy, unregister_policy)
from robot_imitation.settings import SettingError
from robot_imitation.spec import Spec

PLUGINS = Path(__file__).resolve().parent / "plugins"
ARM, GRIPPER = "/arm_controller/commands", "/gripper_controller/commands"
KEEP = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                  history=QoSHistoryPolicy.KEEP_LAST)


def cli(*args, env=None, cwd=None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "robot_imitation.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def one_line(proc) -> str:
    assert proc.returncode != 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def tiny():
    """The tiny family, registered from the test (its module is no part of the package)."""
    sys.path.insert(0, str(PLUGINS))
    try:
        from tiny_policy import TinyPolicy

        register_policy("tiny", TinyPolicy)
        yield TinyPolicy
    finally:
        unregister_policy("tiny")
        sys.path.remove(str(PLUGINS))


@pytest.fixture(scope="module")
def reach_episodes():
    """Three scripted-expert episodes of reach in its gymnasium version (real MuJoCo)."""
    spec = Spec.load("reach")
    episodes = expert_demonstrations("reach", (0, 1, 2), spec)
    assert all(e.success for e in episodes)
    return spec, episodes


def small_run(reach_episodes, out: Path, **settings) -> dict:
    spec, episodes = reach_episodes
    cfg = TrainConfig(steps=30, batch_size=32, eval_every=15, eval_episodes=0, device="cpu",
                      seed=5, log_every=10, **settings)
    data = episodes_dataset(episodes, spec, cfg)
    return train(data, out / "run", cfg, log=lambda *a, **k: None)


def weights_hash(checkpoint) -> str:
    state = load_file(str(Path(checkpoint) / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].numpy().tobytes())
    return h.hexdigest()


# ====================================================================== a family from outside
def write_entry_point(site: Path) -> None:
    """What installing a package that declares the tiny family would leave on the path."""
    info = site / "tiny_policy_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-policy-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[robot_imitation.policies]\n"
                                           "tiny = tiny_policy:TinyPolicy\n")


def state_messages(spec: Spec, stamp) -> dict:
    """One instant of reach observations: {topic: message}."""
    joints = list(spec.observations[0].joints)
    q = [0.1, 0.3, -0.1, -2.1, 0.05, 2.3, 0.7, 0.03, 0.03]
    js = JointState(name=joints, position=q, velocity=[0.01] * len(q), effort=[])
    js.header.stamp = stamp
    ee, target = PoseStamped(), PoseStamped()
    for msg, xyz in ((ee, (0.45, 0.02, 0.38)), (target, (0.55, 0.1, 0.3))):
        msg.header.stamp = stamp
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = xyz
        msg.pose.orientation.w = 1.0
    return {"/ee_pose": ee, "/target_pose": target, "/joint_states": js}


@pytest.mark.ros
def test_a_family_from_outside_the_package_trains_loads_and_drives_the_policy_node(
        tiny, reach_episodes, tmp_path, procs, probe):
    assert "tiny" in available_policies() and policy_class("tiny") is tiny
    # the real trainer, with an option of the family's own config
    result = small_run(reach_episodes, tmp_path, policy="tiny", policy_config={"width": 24})
    ckpt = Path(result["last"])
    meta = json.loads((ckpt / "policy.json").read_text())
    assert meta["type"] == "tiny" and meta["policy"]["width"] == 24
    assert meta["training"]["policy"] == "tiny"
    assert all(np.isfinite([row["train_loss"], row["val_loss"]]).all()
               for row in result["history"]), result["history"]
    # loaded by type, checked against the runtime spec
    spec = Spec.load("reach")
    policy, _ = load_checkpoint(ckpt, spec)
    assert isinstance(policy, tiny) and policy.cfg.width == 24
    with pytest.raises(CheckpointError, match="was not in training"):
        load_checkpoint(ckpt, Spec.load("push"))
    # the backends: numpy runs mlp only, and says so when asked by name; auto tries the others
    with pytest.raises(BackendError) as err:
        select_backend(policy, "numpy")
    assert "numpy" in str(err.value) and "'tiny'" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    loaded = load_policy(ckpt, spec)
    rows = {r["backend"]: r for r in loaded.backends}
    assert "'tiny'" in rows["numpy"]["error"] and "median_us" in rows["eager"]
    assert loaded.policy_type == "tiny" and loaded.chunk == 1
    eager, _ = select_backend(policy, "eager")
    assert eager.kind == "eager"

    # the policy node process finds the family through the entry point group alone
    site = tmp_path / "site"
    write_entry_point(site)
    procs.env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(PLUGINS)] + [p for p in [procs.env.get("PYTHONPATH")] if p])
    arm = probe.record(Float64MultiArray, ARM, KEEP, "arm")
    grip = probe.record(Float64MultiArray, GRIPPER, KEEP, "grip")
    # limits that never bind and no staleness check: the commands are the policy's outputs
    procs.start_node("policy_node", params={"checkpoint": str(ckpt), "max_age_periods": 0.0,
                                            "action_lower": [-1e9], "action_upper": [1e9],
                                            "max_delta": [0.0]})
    pubs = {t: probe.node.create_publisher(type(m), t, STATE_QOS)
            for t, m in state_messages(spec, probe.node.get_clock().now().to_msg()).items()}
    wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), 60,
             "the policy node's subscriptions", procs=procs)
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            for topic, msg in state_messages(spec, probe.node.get_clock().now().to_msg()).items():
                pubs[topic].publish(msg)
            time.sleep(0.05)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(arm) >= 3 and len(grip) >= 3, 60, "commands", procs=procs)
    finally:
        stop.set()
        thread.join()
    assembler = ObservationAssembler(spec)
    for topic, msg in state_messages(spec, probe.node.get_clock().now().to_msg()).items():
        assembler.on_message(topic, msg)
    _, obs = assembler.synchronized()
    expected = policy.act(observation_tensors(obs, spec, "cpu"))[0, 0].double().numpy()
    got = np.concatenate([arm[-1].data, grip[-1].data])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    log = procs.log("policy_node", tail=100_000)
    assert "type tiny" in log, log


# ====================================================================== unknown types
@pytest.mark.ros
def test_an_unknown_type_is_one_line_everywhere(tmp_path, reach_episodes, procs):
    with pytest.raises(UnknownPolicyError) as err:
        policy_class("nosuch")
    assert str(err.value) == f"unknown policy type 'nosuch' (known types: " \
                             f"{', '.join(available_policies())})"
    with pytest.raises(SettingError, match="unknown policy type 'nosuch'"):
        TrainConfig(policy="nosuch")
    # a checkpoint of a type nobody registered: the loader, the command line, the policy node
    result = small_run(reach_episodes, tmp_path / "mlp")
    ckpt = Path(result["last"])
    meta = json.loads((ckpt / "policy.json").read_text())
    meta["type"] = "nosuch"
    (ckpt / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    text = str(err.value)
    assert "unknown policy type 'nosuch'" in text and "mlp" in text and "policy.json" in text
    line = one_line(cli("evaluate", ckpt, "--gym", "--task", "reach", "--episodes", 1))
    assert line.startswith("robot-imitation evaluate: ") and "'nosuch'" in line, line
    assert f"known types: {', '.join(available_policies())}" in line, line
    procs.start_node("policy_node", params={"checkpoint": str(ckpt)})
    assert procs.procs["policy_node"].wait(timeout=60) != 0
    log = procs.log("policy_node")
    assert "unknown policy type 'nosuch'" in log and "Traceback" not in log, log
    # train --policy nosuch: before anything is read or written
    out = tmp_path / "run"
    line = one_line(cli("train", tmp_path / "no_dataset", "--out", out, "--policy", "nosuch"))
    assert line == ("robot-imitation train: unknown policy type 'nosuch' (known types: "
                    f"{', '.join(available_policies())})"), line
    line = one_line(cli("train", tmp_path / "no_dataset", "--out", out, "--policy-option",
                        "width=3"))
    assert line.startswith("robot-imitation train: policy_config: unknown options ['width'] "
                           "of policy mlp"), line
    assert not out.exists()


def test_options_belong_to_their_family(tiny):
    with pytest.raises(SettingError, match="head is an option of policy mlp, not of policy tiny"):
        TrainConfig(policy="tiny", head="gmm")
    with pytest.raises(SettingError, match=r"policy_config width must be an integer from 1"):
        TrainConfig(policy="tiny", policy_config={"width": 0})
    with pytest.raises(SettingError) as err:
        TrainConfig(policy_config={"hidden": [8]})
    assert str(err.value) == ("policy_config: hidden is a training setting of its own, not a "
                              "policy_config option (set it with --hidden, or `hidden:` in a "
                              "--config file)")
    # the options listed are those policy_config takes; the family's settings of their own
    # apart, with their flags (listed among its options before, then refused when given)
    with pytest.raises(SettingError) as err:
        TrainConfig(policy_config={"widht": 3})
    assert str(err.value) == ("policy_config: unknown options ['widht'] of policy mlp (its "
                              "options: image_channels, keypoints, num_classes; set with their "
                              "own flags: --dropout, --head, --hidden, --modes)")
    # a name mlp has as a training setting is another family's own option: act's dropout
    # (refused as "a training setting of its own" before, so act's dropout could not be set)
    from robot_imitation.policies import make_policy

    assert TrainConfig(policy="act", policy_config={"dropout": 0.0}).policy_config == {
        "dropout": 0.0}
    act = make_policy(Spec.load("reach"), TrainConfig(policy="act",
                                                      policy_config={"dropout": 0.0}))
    assert act.cfg.dropout == 0.0
    with pytest.raises(SettingError, match="dropout is an option of policy mlp, not of policy "
                       "act"):
        TrainConfig(policy="act", dropout=0.2)
    # an mlp option that had no setting before: a categorical head with its classes
    policy = make_policy(Spec.load("reach"), TrainConfig(head="categorical",
                                                         policy_config={"num_classes": 3}))
    assert policy.type_name == "mlp" and policy.cfg.num_classes == 3


# ====================================================================== mlp as before
def test_mlp_trains_as_before_and_old_checkpoints_load_as_mlp(reach_episodes, tmp_path):
    """Two runs with one seed give the same weights (the code before policy families gave
    these too: see the report of the change), stored as type mlp; a checkpoint written before
    types were stored (no "type") loads as mlp with the same outputs."""
    settings = {"head": "gmm", "chunk": 3, "dropout": 0.1, "hidden": [64, 32]}
    first = small_run(reach_episodes, tmp_path / "a", policy="mlp", **settings)
    second = small_run(reach_episodes, tmp_path / "b", **settings)
    assert weights_hash(first["last"]) == weights_hash(second["last"])
    meta = json.loads((Path(first["last"]) / "policy.json").read_text())
    assert meta["type"] == "mlp" and meta["policy"]["head"] == "gmm"
    del meta["type"], meta["policy_sha256"]  # (neither was kept then)
    (Path(first["last"]) / "policy.json").write_text(json.dumps(meta))
    spec = Spec.load("reach")
    old, _ = load_checkpoint(first["last"], spec)
    new, _ = load_checkpoint(second["last"], spec)
    assert old.type_name == "mlp"
    g = torch.Generator().manual_seed(0)
    obs = {f.key: torch.randn(4, *f.shape, generator=g) for f in spec.observations}
    assert torch.equal(old.act(obs), new.act(obs))
    # the former names build the same network, weight for weight
    from robot_imitation.learning.policies import Policy
    from robot_imitation.learning.trainer import policy_config
    from robot_imitation.policies import make_policy

    cfg = TrainConfig(**settings)
    torch.manual_seed(3)
    a = Policy(policy_config(spec, cfg)).state_dict()
    torch.manual_seed(3)
    b = make_policy(spec, cfg).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_family_copied_with_a_built_in_name_never_takes_that_name(tmp_path, monkeypatch):
    """`policies/mlp` copied to `mlp2`, listed in BUILTIN, its decorator still
    `@register_policy("mlp")`: before, asking for mlp2 registered the copy as mlp (so `mlp`,
    the default, trained the copy) and said "unknown policy type 'mlp2' (known types: ...,
    mlp2)"; now one line naming the module and the name it took."""
    from robot_imitation.policies import registry

    (tmp_path / "copied_family.py").write_text(
        "from robot_imitation.policies import register_policy\n"
        "from robot_imitation.policies.mlp.model import MlpPolicy\n\n"
        "@register_policy('mlp')\nclass CopiedPolicy(MlpPolicy):\n    pass\n")
    (tmp_path / "misnamed_family.py").write_text(
        "from robot_imitation.policies import register_policy\n"
        "from robot_imitation.policies.mlp.model import MlpPolicy\n\n"
        "@register_policy('mlp3_typo')\nclass MisnamedPolicy(MlpPolicy):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BUILTIN, "mlp2", "copied_family")
    monkeypatch.setitem(registry.BUILTIN, "mlp3", "misnamed_family")
    mlp = policy_class("mlp")
    try:
        with pytest.raises(UnknownPolicyError) as err:
            policy_class("mlp2")
        assert str(err.value) == (
            "policy type 'mlp2': its module copied_family cannot be imported: ValueError: "
            "copied_family.CopiedPolicy registers the policy type 'mlp', a built-in family's "
            "name (robot_imitation.policies.mlp.model): register it under a name of its own")
        assert policy_class("mlp") is mlp and mlp.__module__ == "robot_imitation.policies.mlp.model"
        with pytest.raises(UnknownPolicyError) as err:
            policy_class("mlp3")
        assert str(err.value) == (
            "policy type 'mlp3': its module misnamed_family registers no family of that name "
            "(it registers 'mlp3_typo'); its class needs @register_policy('mlp3')")
        with pytest.raises(SettingError, match="registers no family of that name"):
            TrainConfig(policy="mlp3")
    finally:
        unregister_policy("mlp3_typo")
        for module in ("copied_family", "misnamed_family"):
            sys.modules.pop(module, None)


def test_an_entry_point_named_like_a_built_in_family_is_refused(tmp_path):
    """A plugin whose entry point is named `act`: before, the built-in was taken and the
    plugin's options were refused as act's ("unknown options ['width'] of policy act"); which
    family the user means cannot be told, so neither is taken, in one line."""
    import subprocess

    site = tmp_path / "site"
    info = site / "shadow_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[robot_imitation.policies]\n"
                                           "act = tiny_policy:TinyPolicy\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    line = one_line(cli("train", tmp_path / "no_dataset", "--out", tmp_path / "run", "--policy",
                        "act", env=env))
    assert line == ("robot-imitation train: policy type 'act': the entry point "
                    "tiny_policy:TinyPolicy takes the name of a built-in family "
                    "(robot_imitation.policies.act.model); it needs a name of its own"), line
    ok = subprocess.run([sys.executable, "-c", "from robot_imitation.policies import "
                         "policy_class; print(policy_class('mlp').__module__)"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.stdout.strip() == "robot_imitation.policies.mlp.model", ok.stderr


def test_a_family_that_breaks_the_interface_is_named_before_training(reach_episodes, tmp_path):
    """A family whose act() drops an action value, or whose loss() is per sample: before, the
    first ran every step and then failed at evaluation with "operands could not be broadcast
    together with shapes (8,) (7,) (8,)" (the run lost; without evaluation its checkpoint was
    saved and `evaluate` failed the same way), the second was a traceback from autograd ("grad
    can be implicitly created only for scalar outputs"). Now one line each before any step,
    and no checkpoint; the inference backends refuse such actions too."""
    sys.path.insert(0, str(PLUGINS))
    try:
        from tiny_policy import TinyPolicy

        class ShortActions(TinyPolicy):
            @torch.no_grad()
            def act(self, obs):
                return super().act(obs)[..., :-1]

        class PerSampleLoss(TinyPolicy):
            def loss(self, batch):
                loss, metrics = super().loss(batch)
                return loss.expand(len(batch.actions)), metrics

        register_policy("tiny_short", ShortActions)
        register_policy("tiny_vector", PerSampleLoss)
        with pytest.raises(SettingError) as err:
            small_run(reach_episodes, tmp_path / "short", policy="tiny_short")
        assert str(err.value) == ("policy type 'tiny_short': act() returns (1, 1, 7) for one "
                                  "observation, not (batch, chunk, action_dim) = (1, 1, 8)")
        with pytest.raises(SettingError) as err:
            small_run(reach_episodes, tmp_path / "vector", policy="tiny_vector")
        assert str(err.value) == ("policy type 'tiny_vector': loss() returns a tensor of shape "
                                  "(32,), not a scalar tensor (average it over the batch)")
        for run in ("short", "vector"):
            assert not list((tmp_path / run).rglob("model.safetensors"))
        spec, _ = reach_episodes
        policy = ShortActions.build(spec, None, TrainConfig(policy="tiny_short"))
        with pytest.raises(BackendError, match=r"have the shape \(1, 7\), not \(chunk, "
                                               r"action_dim\) = \(1, 8\)"):
            select_backend(policy, "eager")
    finally:
        unregister_policy("tiny_short")
        unregister_policy("tiny_vector")
        sys.path.remove(str(PLUGINS))
