"""The command mux's action filter against the robot it drives: nothing is forwarded without a
measured reference, and the change allowed is bound by the time elapsed (a velocity bound), not
by the number of messages (audit B, faults 1 and 2).

The unit tests drive ``deploy.limits.CommandLimiter`` with given times; the others run the mux
in its own process over real DDS. They assert bounds that hold however loaded the machine is:
a mux slowed down forwards later, which only allows more change, and the bound is computed from
the test's own clock around the whole exchange."""
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from conftest import mux_value, wait_for
from robot_imitation.deploy.limits import CommandLimiter, command_limits
from robot_imitation.nodes.common import COMMAND_QOS, STATE_QOS, STATUS_QOS, answer
from robot_imitation.pairing import stamp_of
from robot_imitation.spec import Spec

ARM, GRIP = "/arm_controller/commands", "/gripper_controller/commands"
KEEP = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                  history=QoSHistoryPolicy.KEEP_LAST)
PANDA = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1",
                                                     "panda_finger_joint2"]
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 0.0, 0.785])
FAR = np.array([2.8, 1.7, 2.8, -0.5, 2.8, 2.0, 2.8])  # the audit's far target (in the limits)
RATE = 20.0  # push's control rate


def panda_delta() -> np.ndarray:
    """Each arm joint's largest change per tick of push (the robot's velocity limits / 20)."""
    spec = Spec.load("push")
    return command_limits(spec, "panda").max_delta[:7]


# ====================================================================== the limiter alone
def test_a_limited_part_without_a_reference_is_said_and_the_change_follows_the_time():
    spec = Spec.load("push")
    limiter = CommandLimiter(command_limits(spec, "panda"), spec)
    d = panda_delta()
    measured = {"joint_pos": np.append(HOME, [0.04, 0.04])}
    # nothing to count the arm's change from: said (the mux does not forward it); the gripper
    # has no change limit: nothing to count from is needed
    assert limiter.unreferenced(0) and not limiter.unreferenced(0, measured)
    assert not limiter.unreferenced(1)
    assert limiter.unreferenced(0, {"joint_pos": np.full(9, np.nan)})
    # a burst: 25 commands 2 ms apart after the first move one tick, and 50 ms more: one more
    out = limiter.part(0, FAR, measured, now=1000.0)
    np.testing.assert_allclose(out, HOME + d)
    assert not limiter.unreferenced(0)
    for k in range(1, 26):
        out = limiter.part(0, FAR, now=1000.0 + 0.002 * k)
    np.testing.assert_allclose(out, HOME + 2 * d)
    # a command long after: one tick, never more
    before = out
    out = limiter.part(0, FAR, now=1010.0)
    np.testing.assert_allclose(out, before + d)
    # a clock that went back: no change, and a new time base from it
    before = out
    np.testing.assert_array_equal(limiter.part(0, FAR, now=5.0), before)
    np.testing.assert_allclose(limiter.part(0, FAR, now=5.0 + 1 / RATE), before + d)
    # after a reset: the arm needs its reference again
    limiter.reset()
    assert limiter.unreferenced(0)


def test_one_command_a_control_period_is_filtered_as_one_command_a_tick():
    """Lockstep: states one control period apart (stamps in seconds, far from 0 as a real
    clock's) give the same commands, bit for bit, as the filter per command."""
    spec = Spec.load("push")
    limits = command_limits(spec, "panda")
    timed, per_command = CommandLimiter(limits, spec), CommandLimiter(limits, spec)
    measured = {"joint_pos": np.append(HOME, [0.04, 0.04])}
    rng = np.random.default_rng(0)
    for k in range(200):
        action = np.append(HOME + rng.normal(0.0, 0.5, 7), rng.uniform(-0.5, 1.5))
        if k % 50 == 0:
            timed.reset()
            per_command.reset()
        now = 1.79e9 + stamp_of(k / RATE) * 1e-9
        np.testing.assert_array_equal(timed(action, measured, now=now),
                                      per_command(action, measured))


# ====================================================================== the mux over DDS
class Probe:
    """The expert's publishers, the states, and the mux's arm forwards with the time each came
    (the test's monotonic clock)."""

    def __init__(self, probe):
        self.node = probe.node
        self.expert = self.node.create_publisher(Float64MultiArray, "/expert" + ARM,
                                                 COMMAND_QOS)
        self.grip = self.node.create_publisher(Float64MultiArray, "/expert" + GRIP,
                                               COMMAND_QOS)
        self.state = self.node.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.status = self.node.create_publisher(DiagnosticArray, "/episode/status",
                                                 STATUS_QOS)
        self.forwards = []  # (monotonic time, values)
        self._lock = threading.Lock()
        self.node.create_subscription(Float64MultiArray, ARM, self._on_arm, KEEP)
        self.gripper = probe.record(Float64MultiArray, GRIP, KEEP)
        self.diag = probe.record(DiagnosticArray, "/diagnostics", 10)

    def _on_arm(self, msg) -> None:
        with self._lock:
            self.forwards.append((time.monotonic(), np.array(msg.data)))

    def values(self) -> list:
        with self._lock:
            return [v for _, v in self.forwards]

    def matched(self, states: bool = True) -> bool:
        return bool(self.expert.get_subscription_count() and self.grip.get_subscription_count()
                    and (self.state.get_subscription_count() or not states)
                    and self.status.get_subscription_count()
                    and self.node.count_publishers(ARM))

    def publish_state(self, q, t: float | None = None) -> None:
        msg = JointState(name=PANDA, position=list(q) + [0.04, 0.04])
        if t is None:
            msg.header.stamp = self.node.get_clock().now().to_msg()
        else:
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_of(t), 10**9)
        self.state.publish(msg)

    def publish_status(self, t: float, episode: str) -> None:
        msg = DiagnosticArray(status=[DiagnosticStatus(
            values=[KeyValue(key="episode", value=episode)])])
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_of(t), 10**9)
        self.status.publish(msg)

    def snapshot(self) -> dict:
        """The mux's newest /diagnostics values (one report: counts taken together)."""
        for msg in reversed(list(self.diag)):
            for st in msg.status:
                if st.name.startswith("command_mux"):
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def mux_value(self, key: str):
        return mux_value(self.diag, key)


def start_mux(procs, probe, **params) -> Probe:
    procs.start_node("command_mux", params={"mode": "expert", **params})
    p = Probe(probe)
    states = params.get("state_topic", "/joint_states") == "/joint_states"
    wait_for(lambda: p.matched(states), 30, "the mux's subscriptions", procs=procs)
    return p


def send_until(p: Probe, predicate, what: str, procs, state=None, timeout: float = 30.0):
    """The expert's far target at about 20 Hz (after a joint state ``state``, when given), until
    ``predicate``."""
    def step():
        if state is not None:
            p.publish_state(state)
        p.expert.publish(Float64MultiArray(data=FAR.tolist()))
        time.sleep(1 / RATE)
        return predicate()

    wait_for(step, timeout, what, interval=0.0, procs=procs)


def said_once_a_run(log: str, line: str, seconds: float) -> bool:
    """``line`` said when the run of refusals began, then at most every 5 s while it lasted."""
    return 1 <= log.count(line) <= 1 + int(seconds / 5.0)


NO_STATE = ("a command on /arm_controller/commands not forwarded: no joint state on "
            "/joint_states")


@pytest.mark.ros
def test_no_arm_command_is_forwarded_before_a_joint_state(procs, probe):
    """The mux forwarded the first command as it came (clamped to the joint limits only) while
    no joint state had reached it: 2.8 rad from the robot's pose at once. It now forwards no
    arm command before it has measured joints to count the change from (counted in
    /diagnostics, said once for the run of them), and the first one after is one tick from
    them."""
    p = start_mux(procs, probe)
    d = panda_delta()
    begin = time.monotonic()
    for _ in range(20):  # a second of the expert at 20 Hz, no joint state
        p.expert.publish(Float64MultiArray(data=FAR.tolist()))
        p.grip.publish(Float64MultiArray(data=[0.5]))
        time.sleep(1 / RATE)
    # the gripper has no change limit: forwarded (so the mux took the commands)
    wait_for(lambda: len(p.gripper) == 20, 5, "the gripper's forwards", procs=procs)
    time.sleep(0.2)
    assert p.values() == [], "an arm command went out with nothing to count its change from"
    wait_for(lambda: int(p.mux_value("no_reference_dropped") or 0) > 0, 5,
             "the mux's count of the commands it did not forward", procs=procs)
    assert said_once_a_run(procs.log("command_mux"), NO_STATE, time.monotonic() - begin), \
        procs.log("command_mux")
    # joint states: the commands go, the first one tick from the measured joints
    send_until(p, p.values, "a forward after a joint state", procs, state=HOME)
    np.testing.assert_allclose(p.values()[0], HOME + d)
    assert "Traceback" not in procs.log("command_mux")


@pytest.mark.ros
def test_after_a_new_episode_no_arm_command_goes_before_a_state_of_it(procs, probe):
    """The filter counts from the measured joints again after each new episode; a mux whose
    state_topic is wrong (or silent) forwarded each episode's first command bounded only by
    the joint limits. With statuses that do not come with the states (one per episode, on
    another clock), a state from before the new episode is no reference either: the robot may
    have been put back since."""
    p = start_mux(procs, probe, state_topic="/no_such_states")
    p.publish_status(5000.0, "1")
    p.publish_state(HOME)  # (on /joint_states: not the mux's state_topic)
    for _ in range(10):
        p.expert.publish(Float64MultiArray(data=FAR.tolist()))
        p.grip.publish(Float64MultiArray(data=[0.5]))
        time.sleep(1 / RATE)
    wait_for(lambda: len(p.gripper) == 10, 5, "the gripper's forwards", procs=procs)
    time.sleep(0.2)
    assert p.values() == [], "an arm command went out with nothing to count its change from"
    wait_for(lambda: int(p.mux_value("no_reference_dropped") or 0) > 0, 5, "the count",
             procs=procs)
    procs.stop("command_mux")

    p = start_mux(procs, probe)
    d = panda_delta()
    p.publish_status(5000.0, "1")
    send_until(p, p.values, "the first forward of episode 1", procs, state=HOME)
    np.testing.assert_allclose(p.values()[0], HOME + d)
    # episode 2 (the robot put back elsewhere), its states not in. The counts of one report
    # (forwards, commands not forwarded) tell what the mux did after it took the status
    def counts():
        snap = p.snapshot()
        return (int(snap.get("forwarded_expert", 0)), int(snap.get("no_reference_dropped", 0)))

    wait_for(lambda: counts()[0] >= 1, 5, "a report after the first forward", procs=procs)
    dropped = counts()[1]   # (every one of episode 1 came before its first forward)
    p.publish_status(5001.0, "2")
    send_until(p, lambda: counts()[1] > dropped, "commands not forwarded after the new "
               "episode", procs)
    n, dropped = counts()
    for _ in range(5):
        p.expert.publish(Float64MultiArray(data=FAR.tolist()))
        time.sleep(1 / RATE)
    wait_for(lambda: counts()[1] >= dropped + 5, 5, "the mux's report", procs=procs)
    assert counts()[0] == n, "an arm command went out before a state of the new episode"
    wait_for(lambda: len(p.values()) == n, 5, "every forward before the new episode")
    # a state of episode 2: the next forward counts from it, not from the last forward
    start = HOME + 0.5
    send_until(p, lambda: len(p.values()) > n, "the forward after the state", procs,
               state=start)
    np.testing.assert_allclose(p.values()[n], np.minimum(start + d, FAR))


@pytest.mark.ros
def test_a_burst_of_commands_moves_no_faster_than_the_velocity_limits(procs, probe):
    """Without sync the mux limited the change per message: 25 commands 2 ms apart each went
    one tick further, 2.7 rad in about 0.1 s, 20 times the velocity limit. The change allowed
    now counts the control ticks since the last forward, on the mux's clock: each forward is
    at most one tick plus the time from the test's first send to its receipt times the
    velocity limit from the joints, and none is more than a tick from the one before. The
    robot still gets to its target."""
    p = start_mux(procs, probe)
    d = panda_delta()
    p.publish_state(HOME)
    time.sleep(0.3)  # (a state that came later: the commands before it are not forwarded)
    begin = time.monotonic()
    for _ in range(25):
        p.expert.publish(Float64MultiArray(data=FAR.tolist()))
        time.sleep(0.002)
    # then at about the control rate until the target is reached
    send_until(p, lambda: p.values() and np.allclose(p.values()[-1], FAR), "the far target",
               procs, state=HOME)
    with p._lock:
        forwards = list(p.forwards)
    values = np.array([v for _, v in forwards])
    for t, v in forwards:
        allowed = d * (1.0 + (t - begin) * RATE)
        assert np.all(v - HOME <= allowed + 1e-9), (v - HOME, allowed, t - begin)
    steps = np.diff(np.vstack([HOME, values]), axis=0)
    assert np.all(steps >= 0) and np.all(steps <= d + 1e-12), steps


@pytest.mark.ros
def test_in_sync_the_change_counts_the_states_stamps(procs, probe):
    """With sync, one forward a state: a state a control period after the last (lockstep) is a
    whole tick, as before; a robot that publishes its states faster (100 Hz, 5 a tick) moved
    one tick a state, five times its velocity limit. The change allowed now follows the
    states' stamps."""
    p = start_mux(procs, probe, sync=True, sync_sources=["expert"], sources=["expert"])
    d = panda_delta()
    wait_for(lambda: p.mux_value("connected") == "true", 30, "the mux's inputs", procs=procs)
    for k, t in enumerate([10.0, 10.05, 10.1, 10.11, 10.12, 10.13, 10.14, 10.15, 10.2]):
        p.publish_state(HOME, t)
        p.publish_status(t, "1")
        p.expert.publish(answer(FAR, t))
        p.grip.publish(answer([0.5], t))
        wait_for(lambda: len(p.values()) == k + 1, 5, f"the forward of state {t}",
                 procs=procs)
    ticks = np.array([1, 2, 3, 3.2, 3.4, 3.6, 3.8, 4, 5])
    expected = np.minimum(HOME + ticks[:, None] * d, FAR)
    np.testing.assert_allclose(np.array(p.values()), expected, rtol=0, atol=1e-6)
