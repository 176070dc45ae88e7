"""The lockstep protocol core (bridge/stepper.py) on real MuJoCo, without ROS: pairing answers
with the states they name, including each race the bridge node has had."""
import numpy as np
import pytest

from robot_imitation.bridge.core import BridgeCore, CommandResult
from robot_imitation.bridge.stepper import Lockstep, Verdict
from robot_imitation.pairing import (TimerGate, layout_stamp, parse_stamp_label, stamp_label,
                                     stamp_of, stamp_order)
from robot_imitation.sim.env import ImitationEnv
from robot_imitation.sim.experts import make_expert
from robot_imitation.sim.tasks import TaskSim


@pytest.fixture
def step():
    core = BridgeCore(TaskSim("reach"), command_timeout=0.0)
    seeds = iter(range(100, 200))
    lockstep = Lockstep(core, ("arm", "gripper"), next_seed=lambda: next(seeds))
    lockstep.reset(0)
    return lockstep


def hold(step):
    """The command that holds the arm where it is, and the gripper open."""
    return step.core.sim.joint_state()[0][:7].copy(), [1.0]


def answer(step, stamp, arm=None, grip=None):
    """Both sources answer naming ``stamp``; returns the two verdicts."""
    q, g = hold(step)
    a = step.offer("arm", stamp, lambda: step.core.command_arm(q if arm is None else arm))[0]
    b = step.offer("gripper", stamp, lambda: step.core.command_gripper(g if grip is None
                                                                       else grip))[0]
    return a, b


def test_stamp_labels_round_trip():
    for t in (0.0, 0.05, 12.345678912, 1e5 + 0.002):
        ns = stamp_of(t)
        assert parse_stamp_label(stamp_label(ns)) == ns
    assert stamp_label(1_500_000_000) == "stamp=1.500000000"
    for bad in ("", "stamp=", "stamp=1", "stamp=1.5", "stamp=x.000000000", "joints"):
        assert parse_stamp_label(bad) is None

    class Dim:
        def __init__(self, label):
            self.label = label

    class Layout:
        dim = [Dim("joints"), Dim(stamp_label(42))]

    assert layout_stamp(Layout()) == 42


def test_steps_only_when_every_source_answered_this_state(step):
    first = step.stamp
    q, g = hold(step)
    assert step.offer("arm", first, lambda: step.core.command_arm(q))[0] is Verdict.ANSWER
    assert not step.complete() and step.advance() is None
    assert step.offer("gripper", first, lambda: step.core.command_gripper(g))[0] is Verdict.ANSWER
    assert step.complete()
    assert step.advance() is not None and step.core.tick == 1
    assert step.stamp > first
    assert not step.complete(), "answers to one state never count for the next"
    assert step.advance() is None and step.core.tick == 1


def test_late_answer_after_a_reset_is_dropped_not_taken_for_the_first_state(step):
    """The race: the answer to an episode's final state arrived after the reset and was taken
    for the answer to the new episode's first state (every command then one tick late)."""
    for _ in range(3):
        answer(step, step.stamp)
        step.advance()
    old = step.stamp
    step.reset(7)
    far = step.core.sim.joint_state()[0][:7] + 0.3
    verdicts = answer(step, old, arm=far, grip=[0.0])
    assert verdicts == (Verdict.LATE, Verdict.LATE)
    assert not step.complete() and step.advance() is None
    assert step.counters.late == 2
    target = step.core.sim.data.ctrl[step.core.sim.robot.arm_act]
    assert not np.allclose(target, far), "a late answer must not be applied"
    assert answer(step, step.stamp) == (Verdict.ANSWER, Verdict.ANSWER)
    assert step.advance() is not None and step.core.tick == 1


def test_reset_mid_episode_starts_the_new_episode_on_its_own_answer(step):
    """The race: a reset in mid-episode ran the new episode one tick late (an answer to the
    old episode's current state was applied to the new one)."""
    answer(step, step.stamp)
    step.advance()
    mid = step.stamp
    step.reset(8)
    assert step.core.tick == 0 and step.core.episode == 1
    assert answer(step, mid) == (Verdict.LATE, Verdict.LATE)
    assert not step.complete()


def test_answer_that_arrives_before_a_republish_still_counts(step):
    """The race: a lost first answer. Republishing a state (same stamp) changes nothing, and an
    answer given before it still answers the state."""
    first = step.stamp
    answer(step, first)
    assert step.stamp == first and step.complete()
    assert step.advance() is not None


def test_answers_ahead_and_rejected_commands_answer_nothing(step):
    ahead = step.stamp + 10**9
    assert answer(step, ahead) == (Verdict.AHEAD, Verdict.AHEAD)
    assert step.counters.ahead == 2 and not step.complete()
    bad = step.offer("arm", step.stamp, lambda: step.core.command_arm([0.0, 1.0]))
    assert bad == (Verdict.ANSWER, CommandResult.WRONG_LENGTH)
    step.offer("gripper", step.stamp, lambda: step.core.command_gripper([1.0]))
    assert not step.complete(), "a rejected command is no answer"


def test_unstamped_commands_are_taken_by_arrival(step):
    assert answer(step, None) == (Verdict.UNSTAMPED, Verdict.UNSTAMPED)
    assert step.complete() and step.counters.unstamped == 2


def test_finished_episode_holds_until_reset_or_restarts_with_auto_reset(step):
    core = step.core
    core.sim.cfg.max_steps = 3
    for _ in range(3):
        answer(step, step.stamp)
        assert step.advance() is not None
    assert step.held() and core.status().done
    answer(step, step.stamp)
    assert step.advance() is None and core.tick == 3, "a finished episode is not stepped"
    step.reset(9)
    assert not step.held() and core.tick == 0
    step.auto_reset = True
    for _ in range(3):
        answer(step, step.stamp)
        status = step.advance()
    assert status.done and core.episode == 2 and core.tick == 0 and core.sim.seed == 100


def test_lockstep_episode_equals_the_gymnasium_step_for_step():
    """The same actions from the same seed: the stepper's ticks and the gymnasium task's steps
    reach the same states (the bridge's physics is the gymnasium task's)."""
    env = ImitationEnv("push")
    expert = make_expert(env.sim)
    core = BridgeCore(TaskSim("push"), command_timeout=0.5)
    step = Lockstep(core)
    obs, _ = env.reset(seed=5)
    step.reset(5)
    steps = 0
    while True:
        steps += 1
        action = np.asarray(expert(obs), dtype=float)
        n = core.n_arm
        assert answer(step, step.stamp, arm=action[:n], grip=action[n:]) == (
            Verdict.ANSWER, Verdict.ANSWER)
        status = step.advance()
        obs, reward, terminated, truncated, info = env.step(action)
        np.testing.assert_array_equal(core.sim.joint_state()[0], env.sim.joint_state()[0])
        np.testing.assert_array_equal(core.sim.observe()["object_pose"], obs["object_pose"])
        assert status.done == (terminated or truncated) and status.reward == reward
        if status.done:
            break
    # the episode's length is the machine's (floating point: 59 ticks on one CPU, 58 on
    # another), the same in both: one tick per step, ended by success before the time limit
    assert status.success and info["is_success"] and status.tick == steps
    assert not truncated and steps < env.sim.cfg.max_steps
    assert step.advance() is None, "held at the end of the episode"
    env.close()


def test_a_timer_tick_acts_only_on_a_state_whose_status_is_in():
    """``TimerGate`` (the policy node's and the scripted expert's timer): no status heard, or
    statuses that never share a state's stamp, hold nothing back; once one has, a tick acts
    only on a state whose own status is in (counted, and since when, for the node's line).
    Wall-clock stamps made from float seconds compare equal within 1 us."""
    t = 1_796_597_300.123456789  # a wall-clock stamp, seconds: float keeps about 0.2 us
    assert stamp_order(stamp_of(t), 1_796_597_300_123_456_789) == 0
    assert stamp_order(stamp_of(t) + 2000, stamp_of(t)) == 1
    gate = TimerGate()
    assert gate.order(stamp_of(1.0), None, now=0.0) == 0
    assert gate.order(stamp_of(2.0), stamp_of(500.0), now=0.0) == 0, "another kind of status"
    assert not gate.paired and gate.waits == 0
    assert gate.order(stamp_of(3.0), stamp_of(3.0), now=0.0) == 0 and gate.paired
    assert gate.order(stamp_of(3.05), stamp_of(3.0), now=1.0) == 1  # its status not in
    assert gate.order(stamp_of(3.05), stamp_of(3.1), now=1.5) == -1  # its state comes next
    assert gate.waits == 2 and gate.since == 1.0
    assert gate.describe(3.05, -1, now=3.0) == ("state 3.050 s: older than the newest episode "
                                                "status; no command for 2.0 s (2 such ticks in "
                                                "all)")
    assert gate.order(stamp_of(3.1), stamp_of(3.1), now=2.0) == 0 and gate.since is None


def test_a_real_time_command_answering_the_episode_before_a_reset_is_not_applied():
    """``BridgeCore.earlier_episode``: after a reset, a command naming a state before the
    episode's first (an answer still on its way) is counted and not applied; one naming the
    episode's own states, or none, is."""
    core = BridgeCore(TaskSim("reach"))
    core.reset(0)
    first = core.episode_start
    core.step_physics(core.sim.substeps)
    old = stamp_of(core.clock)
    core.reset(1)
    assert core.episode_start > old > first
    assert core.earlier_episode(old) and core.earlier_episode(first)
    assert not core.earlier_episode(core.episode_start) and not core.earlier_episode(None)
    assert core.counters.earlier_episode == 2 and core.counters.rejected_total == 0
