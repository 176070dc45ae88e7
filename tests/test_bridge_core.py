"""The bridge core: the controller behaviour of the bridge node, on real MuJoCo, without ROS."""
import numpy as np
import pytest

from robot_imitation.bridge.core import BridgeCore, CommandResult
from robot_imitation.sim.experts import make_expert
from robot_imitation.sim.tasks import TaskSim


@pytest.fixture
def core():
    c = BridgeCore(TaskSim("reach"), command_timeout=0.0)
    c.reset(0)
    return c


def test_rejects_bad_commands(core):
    q0 = core.sim.joint_state()[0][:7].copy()
    assert core.command_arm([0.1, 0.2]) is CommandResult.WRONG_LENGTH
    assert core.command_arm([np.nan] * 7) is CommandResult.NOT_FINITE
    assert core.command_arm([0.0] * 6 + [np.inf]) is CommandResult.NOT_FINITE
    assert core.command_gripper([0.5, 0.5]) is CommandResult.WRONG_LENGTH
    assert core.command_gripper([np.nan]) is CommandResult.NOT_FINITE
    for _ in range(10):
        core.step_tick()
    np.testing.assert_allclose(core.sim.joint_state()[0][:7], q0, atol=2e-3)
    assert core.counters.rejected == {"wrong_length": 2, "not_finite": 3}
    assert core.counters.accepted == 0


def test_clamps_to_joint_limits(core):
    q = core.sim.joint_state()[0][:7].copy()
    q[0] = 10.0
    assert core.command_arm(q) is CommandResult.CLAMPED
    upper = core.sim.robot.arm_limits[0, 1]
    peak = -np.inf
    for _ in range(100):
        core.step_tick()
        peak = max(peak, core.sim.joint_state()[0][0])
        assert core.sim.data.ctrl[core.sim.robot.arm_act[0]] == upper  # the servo target
    assert upper - 0.3 < peak <= upper + 1e-3
    assert core.counters.clamped == 1


def test_velocity_interface_integrates_and_clamps():
    core = BridgeCore(TaskSim("reach"), interface="velocity", command_timeout=0.0)
    core.reset(0)
    q0 = core.sim.joint_state()[0][0]
    assert core.command_arm([0.2] + [0.0] * 6) is CommandResult.ACCEPTED
    for _ in range(20):  # 1 s
        core.step_tick()
    assert core.sim.joint_state()[0][0] - q0 == pytest.approx(0.2, abs=0.03)
    assert core.command_arm([100.0] + [0.0] * 6) is CommandResult.CLAMPED


def test_command_timeout_holds_the_arm():
    core = BridgeCore(TaskSim("reach"), interface="velocity", command_timeout=0.3)
    core.reset(0)
    q0 = core.sim.joint_state()[0][0]
    core.command_arm([0.5] + [0.0] * 6)
    for _ in range(40):  # 2 s, the command is never renewed
        core.step_tick()
    moved = core.sim.joint_state()[0][0] - q0
    assert core.holding and core.counters.timeouts == 1
    assert 0.08 < moved < 0.25  # ~0.3 s worth of 0.5 rad/s, not 2 s worth
    for _ in range(10):
        core.step_tick()
    assert core.sim.joint_state()[0][0] - q0 == pytest.approx(moved, abs=5e-3)


def test_trajectory_interpolates_by_name(core):
    names = list(core.sim.robot.arm_joint_names)
    q0 = core.sim.joint_state()[0][:7].copy()
    goal = q0 + 0.2
    rev = names[::-1]
    assert core.command_trajectory(rev, [1.0], [goal[::-1]]) is CommandResult.ACCEPTED
    for _ in range(10):  # halfway in time
        core.step_tick()
    mid = core.sim.joint_state()[0][:7]
    assert np.all(mid - q0 > 0.03) and np.all(mid - q0 < 0.19)
    for _ in range(30):
        core.step_tick()
    np.testing.assert_allclose(core.sim.joint_state()[0][:7], goal, atol=0.03)
    assert core.command_trajectory(["nope"] * 7, [1.0], [goal]) is CommandResult.UNKNOWN_JOINTS
    assert core.command_trajectory(names, [1.0, 0.5], [goal, goal]) is \
        CommandResult.BAD_TRAJECTORY


def test_a_trajectory_longer_than_the_command_timeout_runs_to_its_end():
    """The timeout holds the arm when commands stop; a trajectory is a command until its last
    point, and the timeout counts from there."""
    core = BridgeCore(TaskSim("reach"), command_timeout=0.5)
    core.reset(0)
    names = list(core.sim.robot.arm_joint_names)
    q0 = core.sim.joint_state()[0][:7].copy()
    goal = q0 + 0.3
    assert core.command_trajectory(names, [1.0, 2.0], [q0 + 0.15, goal]) is CommandResult.ACCEPTED
    for _ in range(30):  # 1.5 s: three times the timeout, still inside the trajectory
        core.step_tick()
        assert not core.holding
    for _ in range(30):  # past its end (2 s), then past the timeout after it
        core.step_tick()
    np.testing.assert_allclose(core.sim.joint_state()[0][:7], goal, atol=0.03)
    assert core.holding and core.counters.timeouts == 1
    np.testing.assert_allclose(core.sim.joint_state()[0][:7], goal, atol=0.03)


def test_core_steps_like_the_gym_task():
    """A tick through the core is exactly a step of the task: one simulation, two front ends."""
    core = BridgeCore(TaskSim("push"), command_timeout=0.5)
    plain = TaskSim("push")
    expert = make_expert(plain)
    core.reset(9)
    plain.reset(9)
    for _ in range(40):
        action = expert(plain.observe())
        assert core.command_arm(action[:7]).ok and core.command_gripper(action[7:]).ok
        core.step_tick()
        plain.step(action)
        np.testing.assert_array_equal(core.sim.data.qpos, plain.data.qpos)


def test_clock_is_monotonic_across_resets(core):
    for _ in range(5):
        core.step_tick()
    t = core.clock
    core.reset(1)
    assert core.clock > t and core.episode == 1 and core.tick == 0
