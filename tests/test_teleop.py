"""Teleop: the Cartesian core on real MuJoCo, the joystick/keyboard mappings, and both teleop
nodes as processes driving the bridge over real DDS (keyboard under a pseudo-terminal)."""
import os
import pty
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest
import yaml

from conftest import COUNT_LOGGER_CALLS, wait_for

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from robot_imitation.nodes.common import COMMAND_QOS, STATE_QOS
from robot_imitation.nodes.keyboard_teleop_node import parse_keys
from robot_imitation.sim.tasks import TaskSim
from robot_imitation.teleop.core import (AxisMap, CartesianTeleop, GripperTarget,
                                         KeyboardTwist, RisingEdges, TeleopController,
                                         apply_deadzone, gripper_opening, joy_twist,
                                         key_action, key_twist, positions_by_name)

KEYBOARD_MODULE = "robot_imitation.nodes.keyboard_teleop_node"
DEADMAN, OPEN, CLOSE, START, KEEP, DISCARD = 9, 1, 0, 6, 3, 4  # config/teleop.yaml defaults


# ------------------------------------------------------------------------------ core (no ROS)
def drive(sim, teleop, twist, ticks):
    """Apply ``twist`` for ``ticks`` control ticks; returns the commanded arm targets."""
    targets = []
    for _ in range(ticks):
        q = sim.joint_state()[0][: sim.robot.n_arm]
        arm = teleop.command(q, twist, sim.control_period)
        targets.append(arm)
        sim.step(np.append(arm, 0.0))
    return np.array(targets)


@pytest.fixture
def push_sim():
    sim = TaskSim("push")
    sim.reset(seed=3)
    return sim


def test_teleop_joint_targets_pass_the_action_filter(push_sim):
    """Joint targets were only clamped to the joint limits: an IK step asked for more than a
    joint's velocity allows in one command period went out as it came. Each target now
    passes the action filter: within the limits, and within the velocity limit per period of
    the measured joints."""
    arm = CartesianTeleop(push_sim, max_linear=20.0, max_lead=2.0, max_step=1.0,
                          iterations=5)
    q = np.array(push_sim.robot_cfg.home)
    step = push_sim.robot.velocity_limits / push_sim.cfg.control_rate
    target = arm.command(q, [5.0, -5.0, -5.0, 0, 0, 0])
    moved = np.abs(target - q)
    assert np.all(moved <= step * (1 + 1e-12)), moved
    assert np.isclose(moved, step).any(), "the IK asked for more: the filter held it"
    lo, hi = push_sim.robot.arm_limits[:, 0], push_sim.robot.arm_limits[:, 1]
    assert np.all((target >= lo) & (target <= hi))


def test_plus_x_twist_moves_the_end_effector_along_x(push_sim):
    sim = push_sim
    teleop = CartesianTeleop(sim)
    p0 = sim.ee_pose()
    ticks = round(1.0 / sim.control_period)
    drive(sim, teleop, [0.1, 0, 0, 0, 0, 0], ticks)       # 0.1 m/s for 1 s
    drive(sim, teleop, np.zeros(6), 5)                      # let the servos catch up
    p1 = sim.ee_pose()
    d = p1[:3] - p0[:3]
    assert d[0] == pytest.approx(0.1, abs=0.01), d
    assert abs(d[1]) < 0.005 and abs(d[2]) < 0.005, d
    # Orientation held.
    assert abs(np.dot(p0[3:], p1[3:])) > 0.999


def test_zero_twist_holds_still_and_engaging_starts_from_the_measured_pose(push_sim):
    sim = push_sim
    teleop = CartesianTeleop(sim)
    assert not teleop.engaged and teleop.target_pose is None
    q = sim.joint_state()[0][:7]
    teleop.engage(q)
    np.testing.assert_allclose(teleop.target_pose, sim.ee_pose(), atol=1e-9)
    p0 = sim.ee_pose()
    drive(sim, teleop, np.zeros(6), 40)                     # 2 s of zero twist
    np.testing.assert_allclose(sim.ee_pose()[:3], p0[:3], atol=1e-3)
    # Disengage, move the arm by joint commands, re-engage: the target follows the arm.
    teleop.disengage()
    q = sim.joint_state()[0][:7].copy()
    q[0] += 0.3
    for _ in range(20):
        sim.step(np.append(q, 0.0))
    teleop.engage(sim.joint_state()[0][:7])
    np.testing.assert_allclose(teleop.target_pose[:3], sim.ee_pose()[:3], atol=1e-5)
    drive(sim, teleop, np.zeros(6), 10)
    assert np.linalg.norm(sim.ee_pose()[:3] - teleop.target_pose[:3]) < 1e-3


def test_twist_caps_yaw_workspace_and_joint_limits(push_sim):
    sim = push_sim
    limits = sim.robot.arm_limits
    teleop = CartesianTeleop(sim, max_linear=0.15, max_angular=0.5, max_lead=0.05)
    np.testing.assert_allclose(teleop.clip_twist([3, 4, 0, 0, 0, 10]),
                               [0.09, 0.12, 0, 0, 0, 0.5])
    # Yaw: 0.4 rad/s for 1 s turns the tool ~0.4 rad about world z, position held.
    p0 = sim.ee_pose()
    drive(sim, teleop, [0, 0, 0, 0, 0, 0.4], 20)
    drive(sim, teleop, np.zeros(6), 5)
    p1 = sim.ee_pose()
    angle = 2 * np.arccos(min(1.0, abs(np.dot(p0[3:], p1[3:]))))
    assert angle == pytest.approx(0.4, abs=0.05)
    assert np.linalg.norm(p1[:3] - p0[:3]) < 0.01
    # Far beyond reach for 6 s: every command within the joint limits, the target never more
    # than max_lead ahead of the arm (no wind-up).
    targets = drive(sim, teleop, [0.15, 0.0, 0.15, 0, 0, 0], 120)
    assert np.all(targets >= limits[:, 0] - 1e-12) and np.all(targets <= limits[:, 1] + 1e-12)
    q = sim.joint_state()[0][:7]
    ee, _ = teleop.measured_pose(q)
    assert np.linalg.norm(teleop.target_pose[:3] - ee) <= 0.05 + 1e-9
    # A joint configuration at its limits: the command stays inside them.
    q_lim = np.clip(sim.robot.home + np.array([0, 1.5, 0, 1.5, 0, 0, 0]), limits[:, 0],
                    limits[:, 1])
    teleop.engage(q_lim)
    for _ in range(5):
        cmd = teleop.command(q_lim, [0, 0, -0.15, 0, 0, 0], 0.05)
        assert np.all(cmd >= limits[:, 0]) and np.all(cmd <= limits[:, 1])
    # Workspace floor: driving down stops the target at z_low.
    sim.reset(seed=3)
    low = CartesianTeleop(sim, workspace=([-1, -1, 0.30], [1, 1, 1]))
    drive(sim, low, [0, 0, -0.15, 0, 0, 0], 40)
    assert low.target_pose[2] == pytest.approx(0.30, abs=1e-9)
    assert sim.ee_pose()[2] > 0.29
    with pytest.raises(ValueError):
        teleop.command(np.zeros(3), np.zeros(6))
    with pytest.raises(ValueError):
        teleop.command(q, [np.nan, 0, 0, 0, 0, 0])


def test_controller_engages_releases_and_gripper(push_sim):
    sim = push_sim
    ctl = TeleopController(sim)
    q = sim.joint_state()[0]
    assert ctl.update(False, q, [0.1, 0, 0, 0, 0, 0]) is None           # deadman released
    assert ctl.gripper_action("open") is None                           # ignored: not engaged
    arm, grip = ctl.update(True, q, np.zeros(6))
    assert grip == pytest.approx(0.0, abs=0.05)   # push starts closed: kept as measured
    assert ctl.gripper_action("toggle") == 1.0
    assert ctl.gripper_action("toggle") == 0.0
    assert ctl.gripper_action("nudge_open") == pytest.approx(0.25)
    assert ctl.update(False, q, np.zeros(6)) is None and not ctl.engaged
    g = GripperTarget()
    assert g.set(3.0) == 1.0 and g.set(-1) == 0.0 and g.toggle() == 1.0
    lo, hi = sim.robot.gripper_ctrl_range[0]
    assert gripper_opening(sim, [hi, hi]) == 1.0 and gripper_opening(sim, [lo, lo]) == 0.0
    assert gripper_opening(sim, [(lo + hi) / 2] * 2) == pytest.approx(0.5)


# ------------------------------------------------------------------------------ mappings
def test_joystick_mapping():
    assert apply_deadzone(0.05, 0.1) == 0.0
    assert apply_deadzone(1.0, 0.1) == 1.0 and apply_deadzone(-1.0, 0.1) == -1.0
    assert apply_deadzone(0.55, 0.1) == pytest.approx(0.5)
    assert apply_deadzone(float("nan"), 0.1) == 0.0 and apply_deadzone(7.0, 0.1) == 1.0
    mapping = {"linear_x": AxisMap(1, 0.15), "linear_y": AxisMap(0, 0.1, invert=True),
               "angular_z": AxisMap(7, 0.5), "linear_z": AxisMap(-1, 0.15)}
    np.testing.assert_allclose(joy_twist([0.5, 1.0, 0.0], mapping, 0.0),
                               [0.15, -0.05, 0, 0, 0, 0])                  # axis 7 missing
    np.testing.assert_allclose(joy_twist([0.05, -0.05], mapping, 0.1), np.zeros(6))
    edges = RisingEdges()
    assert edges.update({"start": True, "keep": False}) == ["start"]
    assert edges.update({"start": True, "keep": False}) == []            # held: no repeat
    assert edges.update({"start": False, "keep": True}) == ["keep"]
    assert edges.update({"start": True, "keep": True}) == ["start"]
    names = ["panda_finger_joint1", "panda_joint2", "panda_joint1"]
    np.testing.assert_array_equal(
        positions_by_name(names, [0.04, 2.0, 1.0], ["panda_joint1", "panda_joint2"]), [1, 2])
    with pytest.raises(ValueError, match="panda_joint3"):
        positions_by_name(names, [0.04, 2.0, 1.0], ["panda_joint3"])


def test_keyboard_mapping():
    np.testing.assert_allclose(key_twist("w", 0.1, 0.4), [0.1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(key_twist(["s", "a", "F", "q"], 0.1, 0.4),
                               [-0.1, 0.1, -0.1, 0, 0, 0.4])
    np.testing.assert_allclose(key_twist(["d", "r", "e"], 0.1, 0.4), [0, -0.1, 0.1, 0, 0, -0.4])
    assert key_action("w") == "move" and key_action("W") == "move"
    assert key_action(" ") == "gripper_toggle" and key_action("n") == "episode_start"
    assert key_action("k") == "episode_keep" and key_action("x") == "episode_discard"
    assert key_action("p") == "release" and key_action("z") is None
    keys = KeyboardTwist(linear_speed=0.1, angular_speed=0.4, hold=0.5)
    assert not keys.press("z", 0.0)
    assert keys.press("w", 10.0)
    np.testing.assert_allclose(keys.twist(10.2), [0.1, 0, 0, 0, 0, 0])
    assert keys.press("a", 10.3)
    np.testing.assert_allclose(keys.twist(10.4), [0.1, 0.1, 0, 0, 0, 0])
    np.testing.assert_allclose(keys.twist(10.6), [0, 0.1, 0, 0, 0, 0])   # w's window over
    keys.press("s", 10.7)                                                # opposite key replaces
    keys.press("w", 10.75)
    keys.press("s", 10.8)
    np.testing.assert_allclose(keys.twist(10.79), [-0.1, 0.1, 0, 0, 0, 0])
    np.testing.assert_allclose(keys.twist(10.9), [-0.1, 0, 0, 0, 0, 0])   # a's window over
    assert not keys.active(12.0)
    assert parse_keys("w\x1b[Aa\x1bOBq \x1b[1;5C") == ["w", "a", "q", " "]


# ------------------------------------------------------------------------------ nodes over DDS
def write_params(path, node, **params):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({node: {"ros__parameters": params}}, f)
    return str(path)


def start_joy_teleop(procs, **params):
    return procs.start_node("joy_teleop", params=params)


def joy(axes=None, buttons=()):
    msg = Joy()
    msg.axes = [float(a) for a in (axes or [0.0] * 6)]
    pressed = [0] * 17
    for b in buttons:
        pressed[b] = 1
    msg.buttons = pressed
    return msg


def publish_for(pub, msg, seconds, rate=50.0, until=None):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pub.publish(msg)
        if until is not None and until():
            return True
        time.sleep(1.0 / rate)
    return until() if until is not None else True


@pytest.mark.ros
def test_joy_teleop_deadman_motion_and_gripper(procs, probe):
    procs.start_node("mujoco_bridge", params={"task": "push", "mode": "realtime", "seed": 3,
                                              "cameras": [""], "command_timeout": 0.0})
    start_joy_teleop(procs, task="push")
    joints = probe.record(JointState, "joint_states", STATE_QOS)
    ee = probe.record(PoseStamped, "/ee_pose", STATE_QOS)
    arm_cmds = probe.record(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    grip_cmds = probe.record(Float64MultiArray, "/gripper_controller/commands", COMMAND_QOS)
    pub = probe.node.create_publisher(Joy, "joy", 10)
    wait_for(lambda: joints and ee and pub.get_subscription_count() > 0
             and probe.node.count_publishers("/arm_controller/commands") > 0, 30,
             "bridge and joy_teleop up", procs=procs)
    time.sleep(0.3)

    def ee_xyz():
        p = ee[-1].pose.position
        return np.array([p.x, p.y, p.z])

    # Deadman released, stick full forward: nothing moves, nothing is published.
    p0 = ee_xyz()
    publish_for(pub, joy(axes=[0, 1.0, 0, 0, 0, 0]), 1.0)
    procs.check()
    assert not arm_cmds and not grip_cmds, "commands published without the deadman"
    assert np.linalg.norm(ee_xyz() - p0) < 0.002

    # Deadman held, stick forward: the end effector moves +x by several cm.
    moved = publish_for(pub, joy(axes=[0, 1.0, 0, 0, 0, 0], buttons=[DEADMAN]), 10.0,
                        until=lambda: ee_xyz()[0] - p0[0] > 0.06)
    assert moved, f"end effector moved {ee_xyz() - p0} only\n{procs.log('joy_teleop')}"
    d = ee_xyz() - p0
    assert abs(d[1]) < 0.015 and abs(d[2]) < 0.015, d
    assert arm_cmds and len(arm_cmds[-1].data) == 7 and len(grip_cmds[-1].data) == 1

    # Deadman held, stick centred, open button: the fingers open (push starts closed).
    fingers0 = np.array(joints[-1].position[7:9])
    assert np.all(fingers0 < 0.01)
    opened = publish_for(pub, joy(buttons=[DEADMAN, OPEN]), 5.0,
                         until=lambda: np.all(np.array(joints[-1].position[7:9]) > 0.03))
    assert opened, f"fingers at {joints[-1].position[7:9]}"
    assert grip_cmds[-1].data[0] == 1.0

    # Released: the commands stop.
    publish_for(pub, joy(), 0.3)
    n = len(arm_cmds)
    publish_for(pub, joy(axes=[0, 1.0, 0, 0, 0, 0]), 0.5)
    assert len(arm_cmds) == n
    log = procs.log("joy_teleop", tail=100_000)
    assert "engaged at end effector" in log and "released" in log

    # A broken device's NaN axis, the deadman held: the message is not taken (it crashed the
    # node in its timer callback), nothing moves, and the node goes on.
    publish_for(pub, joy(axes=[0, float("nan"), 0, 0, 0, 0], buttons=[DEADMAN]), 1.0)
    procs.check()
    assert len(arm_cmds) == n
    wait_for(lambda: "NaN or infinite axes ignored" in procs.log("joy_teleop"), 5,
             "the NaN axes' log line", procs=procs)
    # bytes that are no Joy (a broken driver's): said (they were lost without a word)
    pub.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
    wait_for(lambda: "/joy: a message that cannot be deserialized as sensor_msgs/msg/Joy (12 "
             "bytes): dropped" in procs.log("joy_teleop"), 5, "the malformed Joy's line",
             procs=procs)
    procs.check()
    assert len(arm_cmds) == n
    assert "Traceback" not in procs.log("joy_teleop", tail=100_000)


@pytest.mark.ros
def test_joy_episode_buttons_call_the_recorder_once_per_press(procs, probe):
    calls = {"start": [], "stop": []}

    def handler(name):
        def answer(request, response):
            calls[name].append(time.monotonic())
            response.success = True
            response.message = f"{name} #{len(calls[name])}"
            return response
        return answer

    # The recorder's start and stop services, hosted here; discard is absent on purpose.
    for name in calls:
        probe.node.create_service(Trigger, f"/episode_recorder/{name}", handler(name))
    start_joy_teleop(procs, task="push")
    pub = probe.node.create_publisher(Joy, "joy", 10)
    wait_for(lambda: pub.get_subscription_count() > 0, 30, "joy_teleop subscribed",
             procs=procs)
    # Short presses until the teleop's client has discovered the service; then count afresh.
    deadline = time.monotonic() + 15
    while not calls["start"] and time.monotonic() < deadline:
        publish_for(pub, joy(), 0.1)
        publish_for(pub, joy(buttons=[START]), 0.1)
    wait_for(lambda: calls["start"], 5, "the start service called", procs=procs)
    publish_for(pub, joy(), 0.3)
    base = len(calls["start"])
    publish_for(pub, joy(buttons=[START]), 1.0)      # held for 1 s: one call
    wait_for(lambda: len(calls["start"]) > base, 5, "the start service called", procs=procs)
    publish_for(pub, joy(), 0.3)
    assert len(calls["start"]) == base + 1 and not calls["stop"]
    publish_for(pub, joy(buttons=[KEEP]), 0.5)
    publish_for(pub, joy(), 0.2)
    publish_for(pub, joy(buttons=[START]), 0.3)      # a second press: a second call
    publish_for(pub, joy(buttons=[DISCARD]), 0.5)    # no discard service: a warning
    publish_for(pub, joy(), 0.3)
    wait_for(lambda: len(calls["start"]) == base + 2 and len(calls["stop"]) == 1, 5,
             "second start and the stop call", procs=procs)
    time.sleep(0.3)
    assert len(calls["start"]) == base + 2 and len(calls["stop"]) == 1
    log = procs.log("joy_teleop", tail=100_000)
    assert f"/episode_recorder/start: start #{base + 2}" in log
    assert "/episode_recorder/stop: stop #1" in log
    assert log.count("/episode_recorder/discard is not available") == 1, log


@pytest.mark.ros
def test_keyboard_teleop_refuses_a_non_tty_stdin(procs):
    result = subprocess.run([sys.executable, "-m", KEYBOARD_MODULE], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60, env=procs.env)
    assert result.returncode == 1
    assert "not a TTY" in result.stderr + result.stdout


@pytest.mark.ros
def test_keyboard_teleop_under_a_pty(procs, probe, tmp_path):
    procs.start_node("mujoco_bridge", params={"task": "push", "mode": "realtime", "seed": 3,
                                              "cameras": [""], "command_timeout": 0.0})
    ee = probe.record(PoseStamped, "/ee_pose", STATE_QOS)
    arm_cmds = probe.record(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    grip_cmds = probe.record(Float64MultiArray, "/gripper_controller/commands", COMMAND_QOS)
    path = write_params(tmp_path / "keyboard.yaml", "keyboard_teleop", task="push",
                        linear_speed=0.15)
    master, slave = pty.openpty()
    original = termios.tcgetattr(slave)
    log_path = tmp_path / "keyboard_teleop.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", KEYBOARD_MODULE, "--ros-args",
                                 "--params-file", path], stdin=slave, stdout=log,
                                stderr=subprocess.STDOUT, env=procs.env,
                                start_new_session=True)
    try:
        def logged(text):
            if proc.poll() is not None:
                pytest.fail(f"keyboard_teleop exited {proc.returncode}:\n"
                            f"{log_path.read_text(errors='replace')}")
            return text in log_path.read_text(errors="replace")

        wait_for(lambda: ee and logged("keyboard teleop for task")
                 and probe.node.count_publishers("/arm_controller/commands") > 0, 30,
                 "bridge state and keyboard_teleop up", procs=procs)
        time.sleep(0.3)  # let the endpoints finish matching
        mode = termios.tcgetattr(slave)
        assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO  # cbreak
        assert not arm_cmds, "commands before any key"
        x0 = ee[-1].pose.position.x
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ee[-1].pose.position.x - x0 < 0.05:
            os.write(master, b"w")                   # a held key, as auto-repeat sends it
            time.sleep(0.05)
        assert ee[-1].pose.position.x - x0 > 0.05, log_path.read_text(errors="replace")
        wait_for(lambda: arm_cmds and grip_cmds, 5, "the commands")
        assert len(arm_cmds[-1].data) == 7
        assert grip_cmds and grip_cmds[-1].data[0] == pytest.approx(0.0, abs=0.05)  # closed
        os.write(master, b" ")                       # gripper toggle: open
        wait_for(lambda: grip_cmds[-1].data[0] == 1.0, 5, "gripper opened")
        os.write(master, b"n")                       # episode start, no recorder: a warning
        wait_for(lambda: logged("/episode_recorder/start is not available"), 5,
                 "the missing recorder reported")
        os.write(master, b"p")                       # release: commands stop
        time.sleep(0.4)
        n = len(arm_cmds)
        time.sleep(0.4)
        assert len(arm_cmds) == n
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait(5)
        restored = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    assert code == 0, log_path.read_text(errors="replace")
    assert restored == original, "the terminal mode was not restored"


BAD_JOINT_STATES = COUNT_LOGGER_CALLS + r"""
import rclpy
from sensor_msgs.msg import JointState

rclpy.init()
from robot_imitation.nodes.joy_teleop_node import JoyTeleop  # noqa: E402

node = JoyTeleop()
calls[0] = 0
bad = JointState(name=["no_such_joint"], position=[0.0])
for _ in range(300):
    node._on_joint_state(bad)
print("calls", calls[0], "state", node._q, flush=True)
node.destroy_node()
rclpy.try_shutdown()
"""


@pytest.mark.ros
def test_joint_states_it_cannot_read_cost_no_log_call_until_a_line_is_due():
    """A stream of joint states without the robot's joints (a wrong driver, a wrong robot)
    called rclpy's throttled logger for each message, which finds its caller with ``inspect``
    logged or not (about 0.5 ms a message here): 300 of them now make one call, and none of
    them becomes the teleop's state."""
    out = subprocess.run([sys.executable, "-c", BAD_JOINT_STATES], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "missing from the joint state" in out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("calls ")][-1]
    assert line.split()[1] in ("1", "2") and line.endswith("state None"), line
