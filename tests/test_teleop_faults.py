"""Teleop faults: a NaN joint state, clashing buttons, zero speed caps, a NaN workspace corner,
arrow keys split across reads, a pad with too few buttons, a closed terminal (SIGHUP). The
nodes run as processes over real DDS, the core on real MuJoCo, the terminal is a real pty."""
import os
import pty
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from conftest import wait_for

from robot_imitation.ros.launcher import NODE_MODULES
from robot_imitation.sim.tasks import TaskSim
from robot_imitation.teleop.core import CartesianTeleop

KEYBOARD_MODULE = NODE_MODULES["keyboard_teleop"]
DEADMAN = 9  # config/teleop.yaml's deadman_button


@pytest.fixture
def push_sim():
    sim = TaskSim("push")
    sim.reset(seed=3)
    return sim


def joy(axes=(0.0,) * 6, buttons=(), count=17):
    from sensor_msgs.msg import Joy

    msg = Joy()
    msg.axes = [float(a) for a in axes]
    msg.buttons = [1 if i in buttons else 0 for i in range(count)]
    return msg


def joint_state(names, positions):
    from sensor_msgs.msg import JointState

    return JointState(name=list(names), position=[float(p) for p in positions])


# ------------------------------------------------------------------------ non-finite states
@pytest.mark.ros
def test_a_non_finite_joint_state_is_dropped_and_the_teleop_goes_on(procs, probe, push_sim):
    """One joint state with a NaN (or inf) arm position, the deadman held: the timer's
    ``_check_q`` raised and the node died (exit 1, an rclpy traceback). Such a state is now
    dropped with a (throttled) line, no command comes from it, and the next good states
    resume the commands."""
    from sensor_msgs.msg import JointState, Joy
    from std_msgs.msg import Float64MultiArray

    from robot_imitation.nodes.common import COMMAND_QOS, STATE_QOS

    names = push_sim.robot.joint_names
    home = list(push_sim.robot_cfg.home) + [0.0] * (len(names) - push_sim.robot.n_arm)
    procs.start_node("joy_teleop", params={"task": "push"})
    arm_cmds = probe.record(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    states = probe.node.create_publisher(JointState, "joint_states", STATE_QOS)
    pad = probe.node.create_publisher(Joy, "joy", 10)
    wait_for(lambda: pad.get_subscription_count() and states.get_subscription_count()
             and probe.node.count_publishers("/arm_controller/commands"), 30,
             "joy_teleop up", procs=procs)
    forward = joy(axes=(0, 0.5, 0, 0, 0, 0), buttons=(DEADMAN,))

    def feed(positions, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            states.publish(joint_state(names, positions))
            pad.publish(forward)
            time.sleep(0.02)

    wait_for(lambda: feed(home, 0.1) or len(arm_cmds) > 5, 20, "commands from good states",
             procs=procs)
    for bad in (float("nan"), float("inf")):
        q = list(home)
        q[3] = bad
        feed(q, 0.5)
        procs.check()  # it died here
    wait_for(lambda: "joint_states with NaN or infinite positions of ['panda_joint4'] "
             "dropped" in procs.log("joy_teleop"), 5, "the dropped state's line", procs=procs)
    n = len(arm_cmds)
    wait_for(lambda: feed(home, 0.1) or len(arm_cmds) > n + 5, 20, "commands again",
             procs=procs)
    assert all(np.all(np.isfinite(m.data)) and len(m.data) == 7 for m in arm_cmds)
    assert "Traceback" not in procs.log("joy_teleop", tail=100_000)


# ------------------------------------------------------------------------ values refused at start
@pytest.mark.parametrize("value, says", [
    # the deadman was also button_episode_discard: every deadman press discarded the episode
    ("deadman_button:=4", "deadman_button and button_episode_discard are both button 4"),
    ("button_episode_keep:=1", "button_gripper_open and button_episode_keep are both button 1"),
    # 0 removed the cap (0 was "unlimited" inside the core)
    ("max_linear:=0.0", "parameter max_linear=0.0: must be > 0"),
    ("max_angular:=0", "parameter max_angular=0.0: must be > 0"),
    # NaN compares false: the box's check passed and the axis had no bound
    ("workspace_low:=[.nan,-0.9,0.01]", "parameter workspace_low=[nan, -0.9, 0.01]: must be 3 "
     "finite numbers"),
])
@pytest.mark.ros
def test_a_teleop_value_that_cannot_work_is_refused_at_start(value, says, tmp_path):
    """Clashing buttons, a zero speed cap and a NaN workspace corner were taken without a
    word. Each now stops joy_teleop at start: exit 1, one fatal line naming it."""
    log_path = tmp_path / "joy_teleop.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", NODE_MODULES["joy_teleop"], "--ros-args",
                                 "-p", value], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # it exits, or it has started (taken the value): then it is stopped here
        wait_for(lambda: proc.poll() is not None
                 or "joy teleop for task" in log_path.read_text(errors="replace"), 120,
                 "joy_teleop to exit or start")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    out = log_path.read_text(errors="replace")
    assert proc.returncode == 1, f"{value} taken: exit {proc.returncode}\n{out}"
    assert "Traceback" not in out, out
    fatal = [line for line in out.splitlines() if "fatal" in line]
    assert len(fatal) == 1 and says in fatal[0], out


def test_the_core_refuses_zero_caps_and_a_nan_workspace(push_sim):
    """``CartesianTeleop`` took max_linear/max_angular 0 as "no cap" (a 2 m/s twist went out
    as it came) and a NaN workspace corner as no bound on that axis."""
    for caps in ({"max_linear": 0.0}, {"max_angular": 0.0}, {"max_linear": -0.1},
                 {"max_lead": 0.0}):
        with pytest.raises(ValueError, match=f"{next(iter(caps))} must be a finite number > 0"):
            CartesianTeleop(push_sim, **caps)
    with pytest.raises(ValueError, match="two finite xyz corners"):
        CartesianTeleop(push_sim, workspace=([np.nan, -0.9, 0.01], [0.9, 0.9, 0.9]))
    teleop = CartesianTeleop(push_sim, max_linear=0.15, max_angular=0.5)
    np.testing.assert_allclose(teleop.clip_twist([2, 0, 0, 0, 0, 6]), [0.15, 0, 0, 0, 0, 0.5])


# ------------------------------------------------------------------------ keyboard
def test_an_escape_sequence_split_across_reads_is_no_key(monkeypatch):
    """An arrow key's ESC in one read and its "[A" in the next (a slow link): "[" and "A" were
    taken as keys, "A" as "a" (+y), and the arm moved. The start of a sequence now waits for
    the next read; a lone ESC (the Esc key) is dropped once ``ESCAPE_TIME`` has passed."""
    from robot_imitation.nodes.keyboard_teleop_node import CbreakTerminal

    master, slave = pty.openpty()
    try:
        terminal = CbreakTerminal(slave)
        monkeypatch.setattr(CbreakTerminal, "ESCAPE_TIME", 3600.0, raising=False)

        def typed(data: bytes) -> list:
            os.write(master, data)
            wait_for(lambda: _readable(slave), 5, "the bytes on the terminal")
            return terminal.read_keys()

        assert typed(b"\x1b") == []
        assert typed(b"[A") == []                          # up arrow, split after ESC
        assert typed(b"w\x1b[") == ["w"]
        assert typed(b"1;5C") == []                        # Ctrl-right, split inside
        assert typed(b"\x1bO") == []
        assert typed(b"Bq") == ["q"]                       # ESC O B (application mode)
        # a lone ESC: dropped once its time is over, the next key is a key
        monkeypatch.setattr(CbreakTerminal, "ESCAPE_TIME", 0.0)
        assert typed(b"\x1b") == []
        time.sleep(0.01)
        assert typed(b"a") == ["a"]
        terminal.restore()
    finally:
        os.close(master)
        os.close(slave)


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def _start_keyboard(procs, slave, log_path, hup=signal.SIG_DFL):
    """keyboard_teleop on the pty ``slave``, with SIGHUP's action ``hup`` (inherited: set here
    around the start; the test process itself may run under nohup)."""
    before = signal.signal(signal.SIGHUP, hup)
    try:
        with open(log_path, "wb") as log:
            return subprocess.Popen([sys.executable, "-m", KEYBOARD_MODULE, "--ros-args", "-p",
                                     "task:=push"], stdin=slave, stdout=log,
                                    stderr=subprocess.STDOUT, env=procs.env,
                                    start_new_session=True)
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.ros
def test_a_closed_terminal_sighup_stops_the_keyboard_teleop_cleanly(procs, tmp_path):
    """Closing the terminal sends SIGHUP: its default action killed the keyboard teleop by the
    signal (exit -1), its close() never ran (the terminal mode not restored). SIGHUP is now a
    request to stop, as SIGINT and SIGTERM are, for every node: exit 0, the mode restored. A
    node started with SIGHUP ignored (nohup) keeps ignoring it."""
    ptys = [pty.openpty() for _ in range(2)]
    original = termios.tcgetattr(ptys[0][1])
    logs = [tmp_path / "hup.log", tmp_path / "nohup.log"]
    procs_ = [_start_keyboard(procs, ptys[0][1], logs[0]),
              _start_keyboard(procs, ptys[1][1], logs[1], hup=signal.SIG_IGN)]
    try:
        def up():
            for proc, log in zip(procs_, logs):
                if proc.poll() is not None:
                    pytest.fail(f"exited {proc.returncode}:\n{log.read_text(errors='replace')}")
            return all("keyboard teleop for task" in log.read_text(errors="replace")
                       for log in logs)

        wait_for(up, 60, "both keyboard teleops up")
        assert termios.tcgetattr(ptys[0][1]) != original  # cbreak
        for proc in procs_:
            os.killpg(proc.pid, signal.SIGHUP)
        code = procs_[0].wait(30)
        assert code == 0, logs[0].read_text(errors="replace")
        assert termios.tcgetattr(ptys[0][1]) == original, "the terminal mode was not restored"
        time.sleep(0.5)
        assert procs_[1].poll() is None, logs[1].read_text(errors="replace")  # nohup's
        os.killpg(procs_[1].pid, signal.SIGINT)
        assert procs_[1].wait(30) == 0, logs[1].read_text(errors="replace")
    finally:
        for proc in procs_:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for master, slave in ptys:
            os.close(master)
            os.close(slave)


# ------------------------------------------------------------------------ a pad with few buttons
@pytest.mark.ros
def test_a_configured_button_beyond_the_pad_s_buttons_is_said_once(procs, probe):
    """A pad with fewer buttons than deadman_button (9) failed without a word: no command, no
    line (missing axes were said). A configured button at or beyond the joy messages' button
    count is now said once per button count, as the axes are."""
    from sensor_msgs.msg import Joy

    procs.start_node("joy_teleop", params={"task": "push"})
    pad = probe.node.create_publisher(Joy, "joy", 10)
    wait_for(lambda: pad.get_subscription_count(), 30, "joy_teleop up", procs=procs)
    says = ("deadman_button 9, button_episode_start 6: the joy messages have 5 buttons, so "
            "these are never pressed (no motion at all)")

    def told():
        pad.publish(joy(axes=(0, 1.0, 0, 0, 0, 0), buttons=range(5), count=5))
        time.sleep(0.02)
        return says in procs.log("joy_teleop")

    wait_for(told, 15, "the buttons beyond the pad's said", procs=procs)
    for _ in range(20):
        told()
    pad.publish(joy(count=17))
    time.sleep(0.3)
    log = procs.log("joy_teleop", tail=100_000)
    assert log.count("the joy messages have") == 1, log
