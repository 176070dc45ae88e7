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


# ----------------------------------------------------------------- trajectory header stamps
def _arm_target(core):
    return core.sim.data.ctrl[core.sim.robot.arm_act].copy()


def _held_core():
    """A bridge core 1 s into an episode, the arm held where it started (default timeout)."""
    core = BridgeCore(TaskSim("reach"), command_timeout=0.5)
    core.reset(0)
    q0 = core.sim.joint_state()[0][:7].copy()
    assert core.command_arm(q0).ok
    for _ in range(20):
        core.step_tick()
    return core, q0


def test_a_trajectory_stamped_in_the_past_skips_its_past_points_without_jumping():
    """As joint_trajectory_controller: points already due are skipped, the arm moves from its
    current target to the next point ahead and runs the rest on time (it used to jump halfway
    along the past segment, and a trajectory all in the past ran at full speed until the
    command timeout froze it midway)."""
    core, q0 = _held_core()
    names = list(core.sim.robot.arm_joint_names)
    now = core.clock
    points = [q0 + 0.1, q0 + 0.2, q0 + 0.3]  # due now-0.5, now+0.5, now+1.5
    assert core.command_trajectory(names, [0.5, 1.5, 2.5], points, start=now - 1.0) is \
        CommandResult.ACCEPTED
    assert core.counters.late_trajectories == 1 and core.counters.rejected == {}
    assert "1 of its 3 points" in core.detail and f"{now:.3f}" in core.detail
    dt = core.sim.model.opt.timestep
    previous, largest_step = _arm_target(core), 0.0
    # The servo target of each physics step (set at the clock time the step starts): from the
    # held q0 to q0+0.2 at now+0.5, then to q0+0.3 at now+1.5.
    t = now
    while t < now + 1.5 - 1e-9:
        t = core.clock
        core.step_physics(1)
        target = _arm_target(core)
        largest_step = max(largest_step, float(np.abs(target - previous).max()))
        previous = target
        assert not core.holding, f"held at {t - now:.3f} s into the trajectory"
        if abs(t - (now + 0.5)) < dt / 2:
            np.testing.assert_allclose(target, q0 + 0.2, atol=1e-6)
    np.testing.assert_allclose(_arm_target(core), q0 + 0.3, atol=1e-6)
    assert largest_step <= 0.2 / 0.5 * dt + 1e-9, f"the target jumped by {largest_step:.4f} rad"
    for _ in range(30):
        core.step_tick()
    np.testing.assert_allclose(core.sim.joint_state()[0][:7], q0 + 0.3, atol=0.03)


def test_a_trajectory_that_ends_in_the_past_is_rejected():
    core, q0 = _held_core()
    names = list(core.sim.robot.arm_joint_names)
    now, held = core.clock, _arm_target(core)
    result = core.command_trajectory(names, [0.2, 0.5], [q0 + 0.2, q0 + 0.3], start=now - 0.5)
    assert result is CommandResult.TRAJECTORY_IN_PAST and not result.ok
    assert f"ends at {now:.3f} s" in core.detail and f"clock ({now:.3f} s)" in core.detail
    assert core.counters.rejected == {"trajectory_in_past": 1}
    for _ in range(20):  # 1 s: the arm stays where it was held (it used to run to the goal)
        core.step_tick()
        np.testing.assert_array_equal(_arm_target(core), held)
    np.testing.assert_allclose(core.sim.joint_state()[0][:7], q0, atol=2e-3)


def test_a_wall_clock_stamp_under_simulation_time_is_rejected_with_its_likely_cause():
    import time

    core, q0 = _held_core()
    names = list(core.sim.robot.arm_joint_names)
    now, held = core.clock, _arm_target(core)
    wall = time.time()
    result = core.command_trajectory(names, [1.0], [q0 + 0.3], start=wall)
    assert result is CommandResult.START_TOO_FAR_AHEAD
    assert f"stamped {wall:.3f} s" in core.detail and f"clock ({now:.3f} s)" in core.detail
    assert "wall-clock stamp" in core.detail
    assert core.counters.rejected == {"start_too_far_ahead": 1}
    for _ in range(10):
        core.step_tick()
        np.testing.assert_array_equal(_arm_target(core), held)
    # A start a little ahead of the clock is a schedule, not a mistake: the arm gets there then.
    now = core.clock
    assert core.command_trajectory(names, [0.5], [q0 + 0.1], start=now + 0.5).ok
    while core.clock < now + 1.0 + 1e-9:  # the step starting at now+1 sets the point's target
        core.step_physics(1)
    np.testing.assert_allclose(_arm_target(core), q0 + 0.1, atol=1e-6)
    assert core.counters.late_trajectories == 0


# ----------------------------------------------------------------- logging bad commands
class _Clock:
    """A time source the test moves by hand."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _burst_log(**kw):
    from robot_imitation.bridge.core import BurstLog

    lines, clock = [], _Clock()
    log = BurstLog(lambda line: lines.append((clock.t, line)), "bad arm commands", clock=clock,
                   **kw)
    return log, lines, clock


def test_burst_log_a_flood_of_mixed_reasons_is_one_line_and_one_summary():
    """5 s at 10 kHz of bad commands whose reasons (and kinds: rejected, clamped) alternate:
    the old log started a new burst at each change of kind, thousands of lines."""
    log, lines, clock = _burst_log(gap=1.0, span=10.0)
    keys = ["wrong_length", "clamped", "not_finite", "clamped"]
    for i in range(50_000):
        log.note(keys[i % 4], f"rejected arm command: {keys[i % 4]}")
        clock.t += 1e-4
        if i % 10_000 == 0:
            log.flush()  # the bridge flushes from its 1 Hz diagnostics timer
    log.flush()  # not yet quiet for a second: the burst goes on
    assert [line for _, line in lines] == [
        "rejected arm command: wrong_length (further bad arm commands less than 1 s apart are "
        "counted, not logged)"]
    clock.t += 1.01
    log.flush()
    assert lines[1][1] == ("50000 bad arm commands in the last burst (5.0 s): clamped 25000, "
                           "not_finite 12500, wrong_length 12500")
    assert len(lines) == 2
    log.end()
    assert len(lines) == 2  # nothing left to summarise


def test_burst_log_is_bounded_per_second_whatever_the_flood():
    """A flood that never stops is reported every `span` seconds; notes separated by more
    than `gap` are separate bursts; a burst of one note has no summary."""
    log, lines, clock = _burst_log(gap=1.0, span=10.0)
    for _ in range(25 * 1024):  # 25 s at 1024 Hz (binary fractions: exact times)
        log.note("not_finite", "rejected arm command: NaN")
        clock.t += 1 / 1024
    log.end()
    starts = [t for t, line in lines if line.startswith("rejected")]
    summaries = [line for _, line in lines if "in the last burst" in line]
    assert starts == [100.0, 110.0, 120.0]
    assert summaries == ["10240 bad arm commands in the last burst (10.0 s): not_finite 10240",
                         "10240 bad arm commands in the last burst (10.0 s): not_finite 10240",
                         "5120 bad arm commands in the last burst (5.0 s): not_finite 5120"]
    times = [t for t, _ in lines]
    assert all(sum(t <= u < t + 1.0 for u in times) <= 2 for t in times)

    log, lines, clock = _burst_log(gap=1.0, span=10.0)
    log.note("wrong_length", "rejected arm command: first")
    clock.t += 1.5
    log.note("wrong_length", "rejected arm command: second")  # quiet for 1.5 s: a new burst
    clock.t += 0.5
    log.note("clamped", "clamped arm command: third")         # same burst as the second
    clock.t += 2.0
    log.flush()
    assert [line.split(" (")[0] for _, line in lines] == [
        "rejected arm command: first", "rejected arm command: second",
        "2 bad arm commands in the last burst"]
    assert lines[-1][1].endswith("(0.5 s): clamped 1, wrong_length 1")
