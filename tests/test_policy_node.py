"""The policy node as a process over real DDS: train/deploy skew, closed loop through the
bridge, safety (stale, NaN, clamping), lifecycle, enable, hot reload, refusals."""
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool

from conftest import COUNT_LOGGER_CALLS, wait_for
from robot_imitation.nodes.common import LATCHED_QOS, STATE_QOS
from robot_imitation.spec import Spec

pytestmark = pytest.mark.ros

NODE = "policy_node"
ARM, GRIPPER = "/arm_controller/commands", "/gripper_controller/commands"
KEEP = QoSProfile(depth=10000, reliability=QoSReliabilityPolicy.RELIABLE,
                  history=QoSHistoryPolicy.KEEP_LAST)


def best(run: Path) -> str:
    return json.loads((run / "result.json").read_text())["best"]


def start_policy(procs, probe, **params):
    procs.start_node(NODE, params=params)
    client = probe.node.create_client(SetBool, f"/{NODE}/enable")
    wait_for(client.service_is_ready, 60, "the policy node's services", procs=procs)


def newest(diags, after: float = 0.0):
    """Values and level of the policy node's newest status received after ``after``."""
    for msg, when in reversed(diags):
        if when < after:
            break
        for st in msg.status:
            if st.name.startswith(NODE):
                return {kv.key: kv.value for kv in st.values}, st.level, st.message
    return None


def timed(probe, msg_type, topic, qos, key):
    """Record (message, arrival monotonic time) pairs."""
    out = []
    probe.msgs[key] = out
    probe.node.create_subscription(msg_type, topic, lambda m: out.append((m, time.monotonic())),
                                   qos)
    return out


class StateFeed:
    """Publishes reach observations (joint states, ee pose, target pose) with one stamp."""

    def __init__(self, probe):
        self.spec = Spec.load("reach")
        self.joints = list(self.spec.observations[0].joints)
        node = probe.node
        self.pubs = {t: node.create_publisher(cls, t, STATE_QOS) for t, cls in
                     (("/joint_states", JointState), ("/ee_pose", PoseStamped),
                      ("/target_pose", PoseStamped))}
        self.node = node
        self.q = np.array([0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8, 0.04, 0.04])
        self._stop = threading.Event()
        self.thread = None

    def matched(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())

    def send(self, q=None, stamp=None, target_xyz=(0.55, 0.1, 0.3), topics=None) -> None:
        """One state; ``topics``: only these of its topics (default: all)."""
        q = self.q if q is None else q
        t = self.node.get_clock().now().to_msg() if stamp is None else stamp
        js = JointState(name=self.joints, position=[float(v) for v in q],
                        velocity=[0.0] * len(q), effort=[])
        js.header.stamp = t
        ee, target = PoseStamped(), PoseStamped()
        for msg, xyz in ((ee, (0.5, 0.0, 0.4)), (target, target_xyz)):
            msg.header.stamp = t
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = xyz
            msg.pose.orientation.w = 1.0
        for topic, msg in (("/ee_pose", ee), ("/target_pose", target), ("/joint_states", js)):
            if topics is None or topic in topics:
                self.pubs[topic].publish(msg)

    def stream(self, rate: float = 50.0, q=None, target_xyz=(0.55, 0.1, 0.3),
               topics=None) -> None:
        """Publish fresh states in the background until ``stop``."""
        self.stop()
        self._stop.clear()

        def loop():
            while not self._stop.is_set():
                self.send(q, target_xyz=target_xyz, topics=topics)
                time.sleep(1.0 / rate)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def count_during(msgs, seconds: float) -> int:
    n = len(msgs)
    time.sleep(seconds)
    return len(msgs) - n


# ====================================================================== train/deploy skew
def replay_episode(reach_demos, ckpt, procs, probe, again: int = 0, **params):
    """Play a recorded episode's observation messages (raw CDR from the bag, as `ros2 bag
    play` sends them) into the live node, one state at a time, each answered before the next;
    returns (the dataset builder's episode, the node's commands (T, action_dim)). ``again``:
    the first states are played twice, as a lockstep bridge publishes a state again when no
    answer reached it; each is answered again with the same command."""
    from mcap.reader import make_reader
    from rclpy.serialization import deserialize_message

    from robot_imitation.data.dataset import build_dataset

    episode = build_dataset(reach_demos).episodes[0]
    bag = Path(episode.source)
    from robot_imitation.nodes.common import matched_reports

    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    grip = timed(probe, Float64MultiArray, GRIPPER, KEEP, "grip")
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "replay_diagnostics")
    # limits that never bind (the filter has tests of its own) and no staleness check: the
    # node's output is the policy's, and the bag's stamps are sim time
    start_policy(procs, probe, checkpoint=ckpt, max_age_periods=0.0, action_lower=[-1e9],
                 action_upper=[1e9], max_delta=[0.0], **{"diagnostics_period": 0.2, **params})
    classes = {"/joint_states": JointState, "/ee_pose": PoseStamped, "/target_pose": PoseStamped}
    pubs = {t: probe.node.create_publisher(c, t, STATE_QOS) for t, c in classes.items()}
    wait_for(lambda: all(p.get_subscription_count() for p in pubs.values())
             and probe.node.count_publishers(ARM) and probe.node.count_publishers(GRIPPER),
             30, "the node's subscriptions and publishers", procs=procs)

    def matched_on_the_nodes_side() -> bool:
        """The node's readers have matched these writers (its status says so of each topic)
        and its command writers these readers (its report): matching is per side, and a state
        sent before is lost to the node, never answered (seen once in a CI run)."""
        statuses = [s for m, _ in list(diags) for s in m.status]
        readers = any(s.name.startswith(NODE) and
                      s.message.count("matched, no message yet") == len(classes)
                      for s in statuses)
        reports: dict = {}
        for m, _ in list(diags):
            matched_reports(m, reports)
        return readers and all(reports.get((f"/{NODE}", t), 0) >= 1 for t in (ARM, GRIPPER))

    wait_for(matched_on_the_nodes_side, 60, "the node's side matched", procs=procs)
    ticks: dict = {}
    with open(next(bag.glob("*.mcap")), "rb") as f:
        for _, channel, message in make_reader(f).iter_messages(topics=list(classes)):
            msg = deserialize_message(message.data, classes[channel.topic])
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            ticks.setdefault(stamp, []).append((channel.topic, message.data))
    answers = {}
    for i, (stamp, parts) in enumerate(sorted(ticks.items())):
        assert sorted(t for t, _ in parts) == sorted(classes), parts
        for _ in range(2 if i < again else 1):
            n = len(arm), len(grip)
            for topic, raw in parts:
                pubs[topic].publish(raw)    # the recorded bytes, as `ros2 bag play` sends them
            wait_for(lambda: len(arm) > n[0] and len(grip) > n[1], 10,
                     f"the answer to {stamp}", procs=procs)
            answer = np.concatenate([arm[-1][0].data, grip[-1][0].data])
            assert stamp not in answers or np.array_equal(answers[stamp], answer)
            answers[stamp] = answer
    assert len(arm) == len(grip) == len(ticks) + min(again, len(ticks)), \
        "exactly one command per state (two for a state played twice)"
    got = np.array([answers[int(round(t * 1e9))] for t in episode.t])
    assert len(got) == len(episode) > 10
    return episode, got


def test_replayed_episode_commands_equal_the_checkpoint_on_the_training_arrays(
        reach_demos, reach_bc, procs, probe):
    """A recorded episode played into the live node: its commands equal the checkpoint
    applied to the dataset builder's arrays. Its first three states are played twice (a
    lockstep bridge's republish): each is answered again, with the same command (the node
    answered a state once, so a lost answer stalled a lockstep simulation for ever)."""
    from robot_imitation.learning.checkpoint import load_checkpoint

    episode, got = replay_episode(reach_demos, best(reach_bc), procs, probe, again=3)
    policy, _ = load_checkpoint(best(reach_bc), Spec.load("reach"))
    obs = {k: torch.as_tensor(v) for k, v in episode.obs.items()}
    expected = policy.act(obs)[:, 0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and a node that read joints by index, not by name, would differ: the check can fail
    shuffled = dict(obs, joint_pos=obs["joint_pos"][:, [1, 0, *range(2, 9)]])
    assert not np.allclose(policy.act(shuffled)[:, 0].double().numpy(), got, atol=1e-3)


@pytest.mark.slow
def test_replayed_episode_commands_of_a_generative_policy_equal_its_chunks_on_the_arrays(
        reach_demos, reach_generative, procs, probe):
    """act and diffusion (its sampler's noise seeded): a recorded episode played into the live
    node, which executes chunks as the family declares (chunk_mode auto: part of each chunk;
    diffusion's next one computed ahead on a worker thread), gives the commands of the same
    controller run on the dataset builder's arrays; and those are the checkpoint's chunks."""
    from robot_imitation.deploy.runtime import load_policy, make_controller
    from robot_imitation.learning.checkpoint import load_checkpoint

    family, run = reach_generative
    ckpt, spec = best(run), Spec.load("reach")
    # ONNX Runtime on both sides: the node's commands must match to the last bits
    episode, got = replay_episode(reach_demos, ckpt, procs, probe, backend="onnxruntime")
    loaded = load_policy(ckpt, spec, "onnxruntime")
    controller, _ = make_controller(loaded, spec, lower=[-1e9], upper=[1e9], max_delta=[0.0])
    assert controller.settings["chunk_mode"] == "chunk"
    assert controller.prefetch == {"act": 0, "diffusion": 1}[family]
    steps = [{k: v[i].astype(np.float64) for k, v in episode.obs.items()}
             for i in range(len(episode))]
    expected = np.array([controller.tick(o).action for o in steps])
    controller.close()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # the executed actions are the chunks of the checkpoint (eager PyTorch) on those arrays:
    # the first chunk from the first state, open loop
    policy, _ = load_checkpoint(ckpt, spec)
    obs = {k: torch.as_tensor(v) for k, v in episode.obs.items()}
    with torch.no_grad():
        chunks = policy.eval().act(obs).double().numpy()
    execute = controller.settings["chunk_execute"]
    np.testing.assert_allclose(got[:execute], chunks[0, :execute], atol=1e-4)
    # ...and not the first action of each state's own chunk: chunks are executed, not re-planned
    assert not np.allclose(got[1:execute], chunks[1:execute, 0], atol=1e-4)


# ====================================================================== closed loop
def test_bc_policy_reaches_through_ros_in_lockstep(reach_bc, procs, ros):
    """Bridge in lockstep and the policy node (joint limits and velocity limits active):
    >= 90% of 50 reach episodes."""
    from robot_imitation.nodes.episode_runner import run_episodes, summarize

    procs.start_node("mujoco_bridge", params={"task": "reach", "mode": "lockstep",
                                              "seed": 70_000})
    procs.start_node(NODE, params={"checkpoint": best(reach_bc), "robot": "panda",
                                   "use_sim_time": True})
    res = summarize(run_episodes(50, timeout=60))
    print(f"\nBC policy node through ROS: {res['successes']}/50 "
          f"(95% CI {res['ci95'][0]:.0%}-{res['ci95'][1]:.0%})")
    assert res["success_rate"] >= 0.9


# ====================================================================== safety
def test_stale_state_nan_and_clamping(reach_bc, procs, probe):
    feed = StateFeed(probe)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    start_policy(procs, probe, checkpoint=best(reach_bc), trigger="timer", robot="",
                 max_age_periods=3.0, safe_command="zero", diagnostics_period=0.2,
                 action_lower=[-0.05], action_upper=[0.05])
    wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
    try:
        # fresh states: commands at the control rate (20 Hz), clamped to +-0.05. Waited for,
        # not taken from the last few commands: a feed held up past 3 periods on a loaded
        # machine gives the (zero) safe command for a while, as it should
        feed.stream()
        wait_for(lambda: any(np.any(np.abs(m.data) == 0.05) for m, _ in list(arm)), 30,
                 "a command clamped to 0.05", procs=procs)
        assert np.all(np.abs([m.data for m, _ in list(arm)]) <= 0.05)
        t_ok = time.monotonic()
        wait_for(lambda: (v := newest(diags, t_ok)) and int(v[0]["clamped_ticks"]) > 0, 5,
                 "clamping in /diagnostics")
        # the states stop: after 3 periods (0.15 s) the safe command (zeros) and an error
        feed.stop()
        t_stop = time.monotonic()
        wait_for(lambda: arm[-1][1] > t_stop + 0.2 and not np.any(arm[-1][0].data), 5,
                 "zero commands after the states stopped")
        wait_for(lambda: (v := newest(diags, t_stop)) and v[1] == DiagnosticStatus.ERROR
                 and "old" in v[2], 5, "a stale-state error in /diagnostics")
        # NaN in the joint positions: no command at all
        feed.stream(q=np.full(9, np.nan))
        time.sleep(0.3)
        assert count_during(arm, 1.0) == 0, "commands published for NaN inputs"
        t_nan = time.monotonic()
        v = wait_for(lambda: newest(diags, t_nan), 5, "diagnostics")
        assert int(v[0]["nonfinite_inputs"]) > 0 and v[1] == DiagnosticStatus.ERROR
        # valid states again: commands resume
        feed.stream()
        wait_for(lambda: count_during(arm, 0.5) >= 5, 10, "commands after NaN inputs")
    finally:
        feed.stop()


@pytest.mark.ros
@pytest.mark.parametrize("node", [NODE, "scripted_expert"])
def test_on_a_timer_a_new_episode_is_known_before_its_first_command(procs, probe, tmp_path,
                                                                     node):
    """trigger timer (a robot at real time): a node acted on the newest state whatever its
    episode status said, so a timer tick between a new episode's first state (the robot put
    back) and that state's status filtered the command from the last one, the old episode's
    pose (joint 1 held near 0 for a robot put back to 1.5: a jump), and a status that came
    before its state reset the filter onto the old state's joints. Once statuses come with the
    states, a tick now acts only on a state whose own status is in (the policy node and the
    scripted expert alike)."""
    from diagnostic_msgs.msg import KeyValue

    from conftest import untrained_checkpoint
    from robot_imitation.nodes.common import STATUS_PUB_QOS

    feed = StateFeed(probe)
    status = probe.node.create_publisher(DiagnosticArray, "/episode/status", STATUS_PUB_QOS)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    if node == NODE:
        start_policy(procs, probe, trigger="timer", max_age_periods=100.0,
                     checkpoint=str(untrained_checkpoint(tmp_path / "ckpt", "reach")))
    else:
        procs.start_node(node, params={"task": "reach", "trigger": "timer",
                                       "max_state_age": 5.0})
    wait_for(lambda: feed.matched() and status.get_subscription_count()
             and probe.node.count_publishers(ARM), 120, "the node's subscriptions", procs=procs)

    def first_answer(stamp) -> float:
        """Joint 1 of the first command answering the state stamped ``stamp`` or a later one
        (a command of an earlier tick may still be on its way)."""
        from robot_imitation.nodes.common import stamp_ns
        from robot_imitation.pairing import layout_stamp

        at = stamp_ns(stamp)
        found = []
        wait_for(lambda: found.extend(m.data[0] for m, _ in list(arm)
                                      if (layout_stamp(m.layout) or 0) >= at) or found, 10,
                 "a command answering the new episode", procs=procs)
        return found[0]

    def send(q, episode=None, stamp=None):
        stamp = stamp or probe.node.get_clock().now().to_msg()
        if q is not None:
            feed.send(np.array(q), stamp=stamp)
        if episode is not None:
            msg = DiagnosticArray(status=[DiagnosticStatus(
                name="episode", values=[KeyValue(key="episode", value=episode)])])
            msg.header.stamp = stamp
            status.publish(msg)
        return stamp

    a = [0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8, 0.04, 0.04]
    b = [1.5] + a[1:]
    for _ in range(15):  # episode 1 at pose a, a status with each state
        send(a, "1")
        time.sleep(0.02)
    wait_for(lambda: len(arm) >= 5, 10, "commands", procs=procs)
    d = 2.175 / 20 + 1e-9  # panda_joint1's velocity limit per tick of reach's 20 Hz
    assert abs(arm[-1][0].data[0] - a[0]) <= 5 * d
    # episode 2: its first state (the robot put back to b) and, 0.3 s later, its status
    stamp = send(b)
    time.sleep(0.3)
    send(None, "2", stamp=stamp)
    for _ in range(10):
        send(b, "2")
        time.sleep(0.02)
    first = first_answer(stamp)
    assert abs(first - b[0]) <= d, f"episode 2's first command {first}, the robot at {b[0]}"
    # episode 3: its status first, its state (the robot put back to a) 0.3 s later
    stamp = send(None, "3")
    time.sleep(0.3)
    send(a, stamp=stamp)
    for _ in range(10):
        send(a, "3")
        time.sleep(0.02)
    first = first_answer(stamp)
    assert abs(first - a[0]) <= d, f"episode 3's first command {first}, the robot at {a[0]}"


def test_a_silent_state_topic_gives_the_safe_command_and_names_it(reach_bc, procs, probe):
    """trigger state: the poses go silent while the joint states go on, so no state completes.
    After max_age the node gives the safe command at its rate and names the silent topic in
    /diagnostics. Its watchdog used to look at the newest message of any topic: it published
    nothing and said nothing for as long as the joint states kept coming."""
    feed = StateFeed(probe)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    start_policy(procs, probe, checkpoint=best(reach_bc), max_age_periods=3.0,
                 safe_command="hold", diagnostics_period=0.2)
    wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
    try:
        feed.stream()
        wait_for(lambda: len(arm) >= 10, 10, "commands", procs=procs)
        feed.stream(topics=("/joint_states",))
        t_cut = time.monotonic()
        # the safe command (the last one held) at the control rate (20 Hz), after 3 periods
        wait_for(lambda: count_during(arm, 0.5) >= 5 and arm[-1][1] > t_cut + 0.5, 10,
                 "safe commands while the poses are silent", procs=procs)
        v = wait_for(lambda: (v := newest(diags, t_cut + 0.3)) and v[1] == DiagnosticStatus.ERROR
                     and v, 5, "an error in /diagnostics")
        assert "/ee_pose" in v[2] or "/target_pose" in v[2], v[2]
        assert "the other topics go on" in v[2], v[2]
        assert int(v[0]["stale"]) > 0
    finally:
        feed.stop()


WRONG_TYPE_DRIVER = """
import rclpy
from geometry_msgs.msg import PointStamped
from rclpy.executors import ExternalShutdownException

rclpy.init()
node = rclpy.create_node("wrong_driver")
pub = node.create_publisher(PointStamped, "/ee_pose", 10)
node.create_timer(0.05, lambda: pub.publish(PointStamped()))
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""


def test_a_topic_that_never_sent_is_named_with_why_while_nothing_is_commanded(reach_bc, procs,
                                                                             probe):
    """A state topic that never sent a message: no state can be answered, so no command. The
    node used to say "commanding" (OK) meanwhile and log nothing. Now /diagnostics names the
    topic and why it is silent, read from the graph (a publisher with incompatible QoS, one
    of another type, none at all): a warning, an error after first_state_timeout."""
    feed = StateFeed(probe)
    probe.node.destroy_publisher(feed.pubs.pop("/ee_pose"))
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    start_policy(procs, probe, checkpoint=best(reach_bc), diagnostics_period=0.2,
                 first_state_timeout=1.0)
    wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
    rest = ("/joint_states", "/target_pose")

    def said(level, *words):
        return wait_for(lambda: (v := newest(diags, time.monotonic() - 0.1))
                        and v[1] == level and all(w in v[2] for w in words) and v, 10,
                        f"/diagnostics level {level} saying {words}", procs=procs)

    try:
        feed.stream(topics=rest)
        # an error (past first_state_timeout) once the streamed topics are in: a status made
        # before they arrived names all three
        v = wait_for(lambda: (v := newest(diags, time.monotonic() - 0.1))
                     and v[1] == DiagnosticStatus.ERROR
                     and v[0].get("waiting_for") == "/ee_pose" and v, 10,
                     "/diagnostics: an error waiting for /ee_pose alone", procs=procs)
        assert "/ee_pose (no publisher)" in v[2] and "no command" in v[2]
        assert "/joint_states" not in v[2]
        # a driver publishing best effort: the node's reliable subscription never matches it
        best_effort = probe.node.create_publisher(
            PoseStamped, "/ee_pose", QoSProfile(depth=10,
                                                reliability=QoSReliabilityPolicy.BEST_EFFORT))
        said(DiagnosticStatus.ERROR, f"/ee_pose ({probe.node.get_fully_qualified_name()} offers "
             "incompatible QoS (")
        probe.node.destroy_publisher(best_effort)
        # a publisher of another type (a process of its own: DDS refuses two types for one
        # topic in one participant)
        procs.start("wrong_type", [sys.executable, "-c", WRONG_TYPE_DRIVER])
        said(DiagnosticStatus.ERROR, "/wrong_driver publishes geometry_msgs/msg/PointStamped, "
             "the spec takes geometry_msgs/msg/PoseStamped")
        assert not arm, "commands without a whole state"
        procs.stop("wrong_type")
        # the right publisher: every state is answered, and the node says so
        feed.pubs["/ee_pose"] = probe.node.create_publisher(PoseStamped, "/ee_pose", STATE_QOS)
        wait_for(feed.matched, 30, "the /ee_pose subscription", procs=procs)
        feed.stream()
        wait_for(lambda: len(arm) >= 10, 10, "commands", procs=procs)
        v = said(DiagnosticStatus.OK, "commanding")
        assert "waiting_for" not in v[0]
    finally:
        feed.stop()


def test_started_without_parameters_the_node_holds_the_checkpoints_limits(reach_bc, procs,
                                                                            probe, tmp_path):
    """`policy_node --ros-args -p checkpoint:=...` and nothing else: wild states (joints at
    50 rad, a target 1e6 m away) never give a command outside the robot's limits, and the
    clamping is logged. A checkpoint that does not exist is refused by the parameter service
    (the running policy and the parameter stay), and a checkpoint published on the trainer's
    topic is ignored unless the node subscribes to it on purpose."""
    from rcl_interfaces.srv import GetParameters, SetParameters
    from rclpy.parameter import Parameter

    from robot_imitation.deploy.limits import robot_limits

    feed = StateFeed(probe)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    grip = timed(probe, Float64MultiArray, GRIPPER, KEEP, "grip")
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    announce = probe.node.create_publisher(String, "/trainer/checkpoint", LATCHED_QOS)
    ckpt = best(reach_bc)
    start_policy(procs, probe, checkpoint=ckpt, diagnostics_period=0.2)
    wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
    limits = robot_limits("panda", Spec.load("reach"))
    try:
        # states until 20 are answered (the node answers once it sees a command subscriber)
        feed.stream(q=np.full(9, 50.0), target_xyz=(1e6, -1e6, 1e6))
        wait_for(lambda: len(arm) >= 20 and len(grip) >= 20, 30, "commands", procs=procs)
        feed.stop()
        commands = np.array([np.append(a.data, g.data) for (a, _), (g, _) in zip(arm, grip)])
        assert np.all(commands >= limits.lower) and np.all(commands <= limits.upper), commands
        log = procs.log(NODE, tail=100_000)
        assert "action limits from robot panda" in log and "clamped to the action limits" in log
        # joints measured at 50 rad, outside the limits: each command a jump to them, said
        assert "a command moved more than max_delta in a tick" in log and "at 50," in log, log
        # a checkpoint that is not there: refused, with the reason, and nothing changes
        req = SetParameters.Request()
        req.parameters = [Parameter("checkpoint", value=str(tmp_path / "nonexistent"))
                          .to_parameter_msg()]
        result = probe.call(SetParameters, f"/{NODE}/set_parameters", req).results[0]
        assert not result.successful and "nonexistent" in result.reason, result
        # nor is no checkpoint: the parameter would name none while the policy runs on
        req.parameters = [Parameter("checkpoint", value="").to_parameter_msg()]
        result = probe.call(SetParameters, f"/{NODE}/set_parameters", req).results[0]
        assert not result.successful and "checkpoint '' refused" in result.reason, result
        got = probe.call(GetParameters, f"/{NODE}/get_parameters",
                         GetParameters.Request(names=["checkpoint"])).values[0].string_value
        assert got == ckpt
        # the trainer's topic is not listened to by default: a path there swaps nothing
        announce.publish(String(data=str(perturbed_copy(ckpt, tmp_path / "other"))))
        time.sleep(1.5)
        t_after = time.monotonic()
        v = wait_for(lambda: newest(diags, t_after), 5, "diagnostics")[0]
        assert v["checkpoint"] == ckpt and v["swaps"] == "0" and v["reloads"] == "0", v
    finally:
        feed.stop()
        probe.node.destroy_publisher(announce)


def test_a_checkpoint_without_limits_is_refused_unless_running_unlimited_is_asked(
        reach_bc, procs, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(best(reach_bc), bare)
    meta = json.loads((bare / "policy.json").read_text())
    del meta["action_limits"]
    (bare / "policy.json").write_text(json.dumps(meta))
    procs.start_node(NODE, params={"checkpoint": str(bare)})
    assert procs.procs[NODE].wait(timeout=60) != 0
    log = procs.log(NODE)
    assert "no action limits" in log and "allow_unlimited" in log, log
    procs.stop(NODE)
    procs.start_node(NODE, name="unlimited", params={"checkpoint": str(bare),
                                                     "allow_unlimited": True})
    wait_for(lambda: "active: commanding" in procs.log("unlimited"), 60, "the node to start",
             procs=procs)
    assert "WITHOUT action limits" in procs.log("unlimited")


# ====================================================================== lifecycle
def lifecycle(probe, transition: int) -> bool:
    req = ChangeState.Request()
    req.transition.id = transition
    return probe.call(ChangeState, f"/{NODE}/change_state", req, timeout=60).success


def lifecycle_state(probe) -> str:
    return probe.call(GetState, f"/{NODE}/get_state").current_state.label


def test_lifecycle_transitions_and_enable(reach_bc, procs, probe, tmp_path):
    feed = StateFeed(probe)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    start_policy(procs, probe, checkpoint=str(tmp_path / "missing"), autostart=False,
                 robot="panda", max_age_periods=0.0)
    try:
        feed.stream()
        assert lifecycle_state(probe) == "unconfigured"
        # configure with a checkpoint that is not there fails and stays unconfigured
        assert not lifecycle(probe, Transition.TRANSITION_CONFIGURE)
        assert lifecycle_state(probe) == "unconfigured"
        assert "missing" in procs.log(NODE)
        probe.set_params(NODE, checkpoint=best(reach_bc))
        assert lifecycle(probe, Transition.TRANSITION_CONFIGURE)
        assert lifecycle_state(probe) == "inactive"
        wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
        assert count_during(arm, 0.5) == 0, "commands while inactive"
        assert lifecycle(probe, Transition.TRANSITION_ACTIVATE)
        assert lifecycle_state(probe) == "active"
        wait_for(lambda: count_during(arm, 0.3) > 5, 10, "commands once active", procs=procs)
        assert probe.call(SetBool, f"/{NODE}/enable", SetBool.Request(data=False)).success
        time.sleep(0.1)
        assert count_during(arm, 0.5) == 0, "commands while disabled"
        assert probe.call(SetBool, f"/{NODE}/enable", SetBool.Request(data=True)).success
        wait_for(lambda: count_during(arm, 0.3) > 5, 10, "commands once enabled again")
        assert lifecycle(probe, Transition.TRANSITION_DEACTIVATE)
        time.sleep(0.1)
        assert count_during(arm, 0.5) == 0, "commands after deactivate"
        assert lifecycle(probe, Transition.TRANSITION_CLEANUP)
        assert lifecycle_state(probe) == "unconfigured"
    finally:
        feed.stop()
    assert procs.stop(NODE) == {NODE: 0}


def test_a_checkpoint_for_another_spec_is_refused_by_name(reach_bc, procs):
    procs.start_node(NODE, params={"checkpoint": best(reach_bc), "spec": "push"})
    proc = procs.procs[NODE]
    proc.wait(timeout=60)
    log = procs.log(NODE)
    assert proc.returncode != 0
    assert "does not match the runtime spec 'push'" in log and "target_pose" in log, log


# ====================================================================== hot reload
def perturbed_copy(src: str, dst: Path) -> Path:
    """A different (but equally good) checkpoint: the same policy, output bias nudged."""
    from robot_imitation.learning.checkpoint import load_checkpoint, save_checkpoint

    policy, meta = load_checkpoint(src)
    with torch.no_grad():
        policy.net[-1].bias.add_(1e-4)
    return save_checkpoint(dst, policy, Spec.from_dict(meta["spec"]), meta["normalization"],
                           meta["training"], meta["dataset_fingerprint"],
                           extra={"action_limits": meta["action_limits"]})


def test_hot_reload_in_a_lockstep_run_misses_no_tick(reach_bc, procs, probe, tmp_path, ros):
    from robot_imitation.nodes.episode_runner import EpisodeRunner, Spinner

    second = perturbed_copy(best(reach_bc), tmp_path / "second")
    states = probe.record(JointState, "/joint_states", KEEP)
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    announce = probe.node.create_publisher(String, "/trainer/checkpoint", LATCHED_QOS)
    # the policy node first: subscribed before the bridge publishes its first state
    start_policy(procs, probe, checkpoint=best(reach_bc), use_sim_time=True,
                 diagnostics_period=0.2, checkpoint_topic="/trainer/checkpoint")
    procs.start_node("mujoco_bridge", params={"task": "reach", "mode": "lockstep",
                                              "seed": 90_000})
    first = wait_for(lambda: newest(diags), 30, "diagnostics")[0]["model_version"]
    # the bridge's idle state before the first reset (republished until answered) is answered
    # before the run starts, so that it counts like every other state
    wait_for(lambda: len(arm) >= 1, 30, "the answer to the bridge's first state", procs=procs)

    # episodes run back to back until two have run after the swap (however slow the machine)
    outcomes, errors, swapped, stop = [], [], threading.Event(), threading.Event()

    def run():
        runner = EpisodeRunner()
        spinner = Spinner(runner)
        try:
            runner.wait_for_bridge()
            after = 0
            while after < 2 and not stop.is_set():
                outcomes.append(runner.run_episode(60))
                after += swapped.is_set()
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            spinner.stop()
            runner.destroy_node()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: len(states) > 40 or errors, 60, "a run under way", procs=procs)
        # The states and commands counted from here on: taken while the bridge is paused and
        # quiet (the probe may have missed the very first states, before discovery matched it).
        pause = "/mujoco_bridge/set_pause"
        assert probe.call(SetBool, pause, SetBool.Request(data=True)).success
        time.sleep(0.5)
        counted_from = (len(arm), len(states))
        assert probe.call(SetBool, pause, SetBool.Request(data=False)).success
        # a bad path first: reported, and the running policy stays
        announce.publish(String(data=str(tmp_path / "nowhere")))
        t_bad = time.monotonic()
        v = wait_for(lambda: (v := newest(diags, t_bad)) and int(v[0]["reload_failures"]) >= 1
                     and v, 30, "the failed reload in /diagnostics")
        assert v[0]["model_version"] == first and "nowhere" in v[0]["reload_error"]
        # then the new checkpoint, while episodes run
        ticks_before = len(states)
        announce.publish(String(data=str(second)))
        t_new = time.monotonic()
        v = wait_for(lambda: errors or (v := newest(diags, t_new))
                     and v[0]["model_version"] != first and v, 60, "the new model in /diagnostics")
        assert not errors, f"the run stopped: {errors[0]}"
        assert v[0]["swaps"] == "1" and v[0]["checkpoint"] == str(second)
        # the ONNX export (the backend chosen for this mlp) ran in a child process: the
        # exporter holds the interpreter lock (test_export_apart.py)
        if v[0]["backend"] == "onnxruntime":
            assert "backend onnxruntime exported in a child process" in procs.log(NODE), \
                procs.log(NODE)[-3000:]
        swapped.set()
        thread.join(timeout=300)
    finally:
        stop.set()
        thread.join(timeout=120)
        probe.node.destroy_publisher(announce)
    assert not errors, f"a lockstep episode stalled (a tick went unanswered): {errors[0]}"
    assert len(states) > ticks_before + 20, "the swap did not happen mid-run"
    # The bridge publishes a state again when no answer comes within `lockstep_republish`:
    # from the pause on, every state was published once, i.e. answered in time (the first
    # states may be republished: sent before the policy node subscribed, or answered slowly
    # while it starts), and each by exactly one command.
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in states[counted_from[1]:]]
    assert len(stamps) == len(set(stamps)), "a state went unanswered and was published again"
    deadline = time.monotonic() + 5  # the last commands may still be on their way
    while len(arm) - counted_from[0] != len(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(arm) - counted_from[0] == len(stamps), \
        f"one command per state: {len(arm) - counted_from[0]} commands for {len(stamps)} " \
        f"states ({len(outcomes)} episodes); policy node: {newest(diags)}"
    assert sum(o.success for o in outcomes) >= 0.75 * len(outcomes), outcomes


# (the scripts below, after rclpy.init and PolicyNode's import) a policy node, a probe node
# that subscribes to its commands, and one state of reach as messages (topic, message)
NODE_AND_PROBE = r"""
node = PolicyNode()
probe = rclpy.create_node("policy_probe")
spec = Spec.load("reach")
qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
for f in spec.actions:  # the node answers only while its commands have a subscriber
    probe.create_subscription(Float64MultiArray, f.topic, lambda _m: None, qos)
names = [j for f in spec.observations for j in f.joints]
joints = JointState(name=names, position=[0.1] * len(names), velocity=[0.0] * len(names),
                    effort=[0.0] * len(names))
pose = PoseStamped()
pose.pose.orientation.w = 1.0
messages = list(dict((f.topic, joints if f.type.endswith("JointState") else pose)
                     for f in spec.observations).items())
"""

LOG_CALLS = COUNT_LOGGER_CALLS + r"""
import sys
import time

import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from robot_imitation.spec import Spec

checkpoint, n = sys.argv[1], int(sys.argv[2])
rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}", "-p", "max_delta:=[1.0e-9]",
                 "-p", "max_age_periods:=3.0"])
from robot_imitation.nodes.policy_node import PolicyNode  # noqa: E402
""" + NODE_AND_PROBE + r"""
deadline = time.monotonic() + 30
while not all(p.get_subscription_count() for p in node.pubs):
    assert time.monotonic() < deadline, "the probe's subscriptions never matched"
    time.sleep(0.05)


def feed(count, age):
    for i in range(count):
        t = time.time() - age
        for topic, msg in messages:
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
            if topic == "/joint_states":
                msg.position[0] = 0.1 + 0.01 * (i % 2)  # each state a new observation
            node._on_state(topic, serialize_message(msg))


feed(5, 0.0)  # the first commands (and their log lines)
counters = node.controller.counters
for phase, age in (("clamped", 0.0), ("stale", 10.0)):
    calls[0], clamped0, stale0 = 0, counters.clamped_ticks, counters.stale
    feed(n, age)
    print(phase, counters.clamped_ticks - clamped0, counters.stale - stale0, calls[0], flush=True)
calls[0], commands0 = 0, counters.commands
for _ in range(n):  # bytes that are no JointState: refused, each
    node._on_state("/joint_states", b"\x00\x01\x00\x00" + b"\xff" * 8)
print("malformed", counters.commands - commands0, calls[0], flush=True)
probe.destroy_node()
node.destroy_node()
rclpy.try_shutdown()
"""


def test_a_tick_that_clamps_or_is_stale_pays_no_log_call_until_a_line_is_due(tmp_path):
    """Every clamped tick, every stale one and every malformed state message used to call
    rclpy's throttled logger, which finds its caller with ``inspect`` each time, logged or not
    (about 0.5 ms a call here: a 1 kHz loop clamping its commands overran with it). The node
    decides first whether a line is due: hundreds of them in a row make at most a couple of
    calls."""
    import subprocess

    from conftest import untrained_checkpoint

    ckpt = untrained_checkpoint(tmp_path / "ckpt", "reach")
    n = 300
    out = subprocess.run([sys.executable, "-c", LOG_CALLS, str(ckpt), str(n)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]]
            for line in out.stdout.splitlines()
            if line.split()[:1] in (["clamped"], ["stale"], ["malformed"])}
    clamped, _, clamped_calls = rows["clamped"]
    _, stale, stale_calls = rows["stale"]
    answered, malformed_calls = rows["malformed"]
    assert clamped == n and stale == n and answered == 0, rows
    assert clamped_calls <= 2 and stale_calls <= 2 and malformed_calls <= 2, rows


WATCHDOG = r"""
import sys
import time

from robot_imitation.nodes.common import STATE_QOS  # the ROS environment first

import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.experimental import EventsExecutor
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from robot_imitation.nodes.policy_node import PolicyNode
from robot_imitation.spec import Spec

checks = [0]
on_timer = PolicyNode._on_timer


def counted(self):  # each time the node's timer calls it
    checks[0] += 1
    on_timer(self)


PolicyNode._on_timer = counted
rclpy.init(args=["--ros-args", "-p", f"checkpoint:={sys.argv[1]}", "-p", "rate:=100.0",
                 "-p", "max_age_periods:=20.0", "-p", "safe_command:=hold"])
""" + NODE_AND_PROBE + r"""
pubs = {t: probe.create_publisher(type(m), t, STATE_QOS) for t, m in messages}


def send():
    stamp = probe.get_clock().now().to_msg()
    joints.position[0] = 0.2 - joints.position[0]  # each state a new observation
    for topic, msg in messages:
        msg.header.stamp = stamp
        pubs[topic].publish(msg)


executor = EventsExecutor()
executor.add_node(node)
executor.add_node(probe)


def spin_until(done, what, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        executor.spin_once(timeout_sec=0.01)


spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()) and
           all(p.get_subscription_count() for p in node.pubs), "no match")
counters = node.controller.counters
feed = probe.create_timer(0.01, send)  # states at the control rate (100 Hz)
spin_until(lambda: counters.commands >= 20, "no command")
for phase in ("flowing", "silent", "flowing again"):
    if phase == "silent":
        feed.cancel()
    elif phase == "flowing again":
        feed.reset()
    checks[0], ticks0, stale0, t0 = 0, counters.ticks, counters.stale, time.monotonic()
    if phase == "silent":  # from the first safe command, 30 more
        spin_until(lambda: counters.stale > stale0, "no safe command")
        stale0, t0, checks[0] = counters.stale, time.monotonic(), 0
        spin_until(lambda: counters.stale >= stale0 + 30, "no 30 safe commands")
    else:
        spin_until(lambda: counters.ticks >= ticks0 + 150, "no 150 ticks")
    print(phase, counters.ticks - ticks0, counters.stale - stale0, checks[0],
          round(time.monotonic() - t0, 3), flush=True)
probe.destroy_node()
node.destroy_node()
rclpy.try_shutdown()
"""


def test_trigger_state_checks_for_stale_states_only_while_none_is_answered(tmp_path):
    """trigger state: the timer that watches for stale states ran every control period while
    the states came, a second callback (and at 1 kHz a second wake-up of the process) per
    state. It is pushed back by each state answered now: no check while they come; once none
    was answered for half of max_age, a check each control period, so the safe command comes
    at the control rate (max_age_periods 20: at a tenth of it without that), back to none once
    the states come again."""
    import subprocess

    from conftest import untrained_checkpoint

    ckpt = untrained_checkpoint(tmp_path / "ckpt", "reach")
    out = subprocess.run([sys.executable, "-c", WATCHDOG, str(ckpt)], capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.rsplit(" ", 4)[0]: [float(v) for v in line.rsplit(" ", 4)[1:]]
            for line in out.stdout.splitlines()
            if line.startswith(("flowing", "silent"))}
    for phase in ("flowing", "flowing again"):
        ticks, _, checks, _ = rows[phase]
        assert ticks >= 150 and checks <= ticks / 10, (phase, rows)
    _, stale, checks, seconds = rows["silent"]
    # each check a safe command, each control period (10 ms: 0.3 s for 30; one a watchdog's
    # max_age / 2 would take 3 s)
    assert stale >= 30 and checks <= stale + 1 and seconds < 1.5, rows


@pytest.mark.ros
def test_states_faster_than_the_control_rate_move_no_faster_than_the_limits(procs, probe,
                                                                            tmp_path):
    """trigger state, a driver publishing states at 100 Hz (reach's control rate is 20 Hz):
    before, every state's answer moved max_delta from the last command, five times the
    velocity limit. Now the change allowed counts the control periods between the states'
    stamps (at most one), whatever the machine's load makes of their spacing: each command
    moves at most max_delta times (its state's stamp - the last answered one's) x 20."""
    from conftest import untrained_checkpoint
    from robot_imitation.pairing import layout_stamp

    feed = StateFeed(probe)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    start_policy(procs, probe, checkpoint=str(untrained_checkpoint(tmp_path / "ckpt", "reach")),
                 trigger="state", max_delta=[0.001], max_age_periods=100.0)
    wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
    feed.stream(rate=100.0, q=np.zeros(9))
    try:
        wait_for(lambda: len(arm) >= 60, 60, "60 commands", procs=procs)
    finally:
        feed.stop()
    cmds = np.array([m.data for m, _ in list(arm)])
    stamps = np.array([layout_stamp(m.layout) for m, _ in list(arm)], dtype=np.float64) * 1e-9
    steps = np.abs(np.diff(cmds, axis=0)).max(axis=1)
    # (the node reads a stamp as float seconds: about 2e-7 s of a wall-clock time, 2e-5 of a
    # 10 ms spacing)
    allowed = 0.001 * np.minimum(1.0, np.diff(stamps) * 20.0) * (1 + 1e-4) + 1e-12
    assert np.all(steps <= allowed), (steps[steps > allowed] / allowed[steps > allowed],
                                      np.diff(stamps)[steps > allowed])
    assert steps.max() > 1e-4, "the commands never moved: nothing was measured"
