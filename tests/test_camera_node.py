"""The policy node with a camera slower than its joint states, as a process over real DDS: with
``camera_frames: latest`` each joint state is answered with the newest frame; each frame is
encoded once (``camera_encoding`` inline: exactly the commands of the same controller run here
on the same observations; ahead and between: each from the state's own frame or the one before
it)."""
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool

from conftest import wait_for
from robot_imitation.deploy.runtime import load_policy, make_controller
from robot_imitation.learning.checkpoint import save_checkpoint
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.nodes.common import IMAGE_QOS, STATE_QOS
from robot_imitation.policies import make_policy
from robot_imitation.spec import Spec

pytestmark = pytest.mark.ros

NODE = "policy_node"
SPEC = Spec.load("push_image")
ARM, GRIPPER = "/arm_controller/commands", "/gripper_controller/commands"
KEEP = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                  history=QoSHistoryPolicy.KEEP_LAST)
STATES, EVERY = 24, 6     # a frame with every sixth joint state
UNBOUND = {"action_lower": [-1e9], "action_upper": [1e9], "max_delta": [0.0]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = make_policy(SPEC, TrainConfig(policy="mlp", chunk=1, policy_config={
        "image_channels": [8, 16], "keypoints": 8}))
    n = policy.cfg.input_dim
    policy.obs_norm.set(torch.zeros(n), torch.full((n,), 0.5))
    policy.act_norm.set(torch.zeros(SPEC.action_dim), torch.full((SPEC.action_dim,), 0.5))
    return str(save_checkpoint(tmp_path_factory.mktemp("camera") / "ckpt", policy.eval(), SPEC))


def messages(k: int, rng) -> list:
    """(topic, message) of state k, stamped alike; a frame with every EVERY-th state."""
    joints = SPEC.observations[0].joints
    out = []
    if k % EVERY == 0:
        out.append(("/front/image_raw", Image(
            height=96, width=96, encoding="rgb8", step=288,
            data=rng.integers(0, 256, 96 * 96 * 3, dtype=np.uint8).tobytes())))
    pose = PoseStamped()
    pose.pose.position.x, pose.pose.orientation.w = float(rng.normal(0.5, 0.05)), 1.0
    out += [("/ee_pose", pose), ("/joint_states", JointState(
        name=joints, position=rng.normal(0, 0.3, 9).tolist(),
        velocity=rng.normal(0, 0.3, 9).tolist(), effort=[0.0] * 9))]
    for _, msg in out:
        msg.header.stamp.sec, msg.header.stamp.nanosec = 100, k * 1_000_000
    return out


def expected(ckpt: str, states: list, back: int = 0) -> np.ndarray:
    """The controller (ONNX Runtime, the node's backend here) on the observations the node
    assembles: each state with the newest frame (``back`` frames before it)."""
    loaded = load_policy(ckpt, SPEC, "onnxruntime")
    controller, _ = make_controller(loaded, SPEC, lower=[-1e9], upper=[1e9], max_delta=[0.0])
    frames, out = [], []
    for msgs in states:
        by_topic = dict(msgs)
        if "/front/image_raw" in by_topic:
            frames.append(by_topic["/front/image_raw"])
        by_topic["/front/image_raw"] = frames[max(0, len(frames) - 1 - back)]
        obs = {f.key: SPEC.extract(f, by_topic[f.topic]) for f in SPEC.observations}
        out.append(controller.tick(obs).action)
    controller.close()
    return np.array(out)


def own(diags) -> list:
    """The policy node's control statuses among the /diagnostics messages received."""
    return [s for m in list(diags) for s in m.status if s.name.startswith(NODE)]


def run_node(procs, probe, ckpt: str, encoding: str, **params) -> tuple[list, np.ndarray, dict,
                                                                       list]:
    """Each state published and answered before the next; (states, commands, the last
    diagnostics' values, the node's statuses (level, message) in order)."""
    arm, grip, diags = [], [], []
    probe.node.create_subscription(Float64MultiArray, ARM, arm.append, KEEP)
    probe.node.create_subscription(Float64MultiArray, GRIPPER, grip.append, KEEP)
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    procs.start_node(NODE, params={"checkpoint": ckpt, "backend": "onnxruntime",
                                   "max_age_periods": 0.0, "camera_frames": "latest",
                                   "camera_encoding": encoding, "diagnostics_period": 0.2,
                                   "episode_topic": "", **UNBOUND, **params})
    client = probe.node.create_client(SetBool, f"/{NODE}/enable")
    wait_for(client.service_is_ready, 120, "the policy node's services", procs=procs)
    pubs = {"/front/image_raw": probe.node.create_publisher(Image, "/front/image_raw", IMAGE_QOS),
            "/ee_pose": probe.node.create_publisher(PoseStamped, "/ee_pose", STATE_QOS),
            "/joint_states": probe.node.create_publisher(JointState, "/joint_states", STATE_QOS)}
    wait_for(lambda: all(p.get_subscription_count() for p in pubs.values())
             and probe.node.count_publishers(ARM) and probe.node.count_publishers(GRIPPER),
             120, "the node's subscriptions and publishers", procs=procs)
    # the node's side matched too (its /diagnostics say so of each topic): a frame sent before
    # the node's reader has matched this writer is lost to it (volatile), and its state waits
    # for a frame forever
    wait_for(lambda: any(s.message.count("matched, no message yet") == len(pubs)
                         for s in own(diags)[-2:]),
             60, "the node's subscriptions matched on its side", procs=procs)
    rng = np.random.default_rng(7)
    states, got = [messages(k, rng) for k in range(STATES)], []
    for k, msgs in enumerate(states):
        for topic, msg in msgs:
            pubs[topic].publish(msg)
            if topic == "/front/image_raw":
                time.sleep(0.05)   # the frame in before its state (they travel apart)
        wait_for(lambda: len(arm) > k and len(grip) > k, 30, f"the answer to state {k}",
                 procs=procs)
        got.append(np.concatenate([arm[k].data, grip[k].data]))
    time.sleep(0.5)
    assert len(arm) == STATES, "exactly one command per joint state"
    since = len(own(diags))
    wait_for(lambda: len(own(diags)) > since + 1, 10, "/diagnostics", procs=procs)
    values = {kv.key: kv.value for kv in own(diags)[-1].values}
    statuses = [(s.level, s.message) for s in own(diags)]
    return states, np.array(got), values, statuses


def test_inline_answers_each_state_from_its_newest_frame_encoded_once(checkpoint, procs, probe):
    states, got, diag, _ = run_node(procs, probe, checkpoint, "inline")
    np.testing.assert_allclose(got, expected(checkpoint, states), rtol=1e-6, atol=1e-6)
    # the frame matters: the same states with the frame before give other commands
    assert not np.allclose(got[EVERY:], expected(checkpoint, states, back=1)[EVERY:], atol=1e-4)
    assert diag["camera_encoding"] == "inline"
    assert int(diag["frames_encoded"]) == STATES // EVERY


@pytest.mark.parametrize("encoding", ["ahead", "between"])
def test_ahead_answers_each_state_from_its_frame_or_the_one_before(checkpoint, procs, probe,
                                                                   encoding):
    """ahead (a thread of its own) and between (stages on the control thread after the ticks):
    each state answered from its own frame or the one before, the first frame waited for."""
    states, got, diag, _ = run_node(procs, probe, checkpoint, encoding)
    own, before = expected(checkpoint, states), expected(checkpoint, states, back=1)
    for k, command in enumerate(got):
        assert (np.allclose(command, own[k], rtol=1e-6, atol=1e-6)
                or np.allclose(command, before[k], rtol=1e-6, atol=1e-6)), k
    assert np.allclose(got[0], own[0], rtol=1e-6, atol=1e-6)   # the first frame: waited for
    assert diag["camera_encoding"] == encoding and int(diag["late_frames"]) >= 0
    if encoding == "between":
        # the tick that takes a new frame commands from the one before (its stages run after
        # the command is out)
        for k in range(EVERY, STATES, EVERY):
            assert np.allclose(got[k], before[k], rtol=1e-6, atol=1e-6), k
    else:
        # the encoder's thread below the control loop (SCHED_IDLE)
        assert diag["camera_encoder_priority"] == "idle"
    assert int(diag["frames_encoded"]) == STATES // EVERY
    assert int(diag["previous_frame_ticks"]) == sum(
        not np.allclose(c, o, rtol=1e-6, atol=1e-6) for c, o in zip(got, own))


def test_ahead_frames_past_camera_max_lag_are_encoded_on_the_tick_and_warned(tmp_path, procs,
                                                                            probe):
    """A camera encoder of some 50 ms and ``camera_max_lag`` of 1 ms: the state after a new
    frame finds it in encoding past the bound, so that tick encodes the newest frame itself:
    every command comes from its state's frame or the one before, and /diagnostics warns
    (frames given up on, counted in late_frames)."""
    torch.manual_seed(0)
    policy = make_policy(SPEC, TrainConfig(policy="mlp", chunk=1, policy_config={
        "image_channels": [128, 256, 256], "keypoints": 8}))
    ckpt = str(save_checkpoint(tmp_path / "heavy", policy.eval(), SPEC))
    states, got, diag, statuses = run_node(procs, probe, ckpt, "ahead", camera_max_lag=0.001)
    own, before = expected(ckpt, states), expected(ckpt, states, back=1)
    for k, command in enumerate(got):
        assert (np.allclose(command, own[k], rtol=1e-6, atol=1e-6)
                or np.allclose(command, before[k], rtol=1e-6, atol=1e-6)), k
    assert int(diag["late_frames"]) >= 1, diag
    assert any(level == DiagnosticStatus.WARN and "over camera_max_lag (0.001 s" in message
               for level, message in statuses), statuses
