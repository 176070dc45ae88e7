"""The gymnasium learning world (rollouts/gym.py) that the DAgger benchmark runs the shared
algorithm in: who drives, and labels that are always the expert's."""
import numpy as np
import pytest

from robot_imitation.algorithms.dagger import Gated, Mixture
from robot_imitation.learning.dagger_sim import labels_to_reach
from robot_imitation.learning.trainer import TrainConfig, train
from robot_imitation.rollouts.gym import GymLearningWorld, episodes_dataset
from robot_imitation.sim.supervisor import InterventionGate
from robot_imitation.spec import Spec


@pytest.fixture(scope="module")
def push_world(tmp_path_factory):
    """The push world with a barely trained learner deployed (5 training steps on one
    demonstration: it wanders)."""
    spec = Spec.load("push")
    world = GymLearningWorld("push", spec, seed=0)
    demos, _ = world.demonstrations([3])
    assert demos[0].success
    cfg = TrainConfig(steps=5, eval_every=0, eval_episodes=0, device="cpu", val_fraction=0.0,
                      task="push")
    out = tmp_path_factory.mktemp("learner")
    world.deploy(train(episodes_dataset(demos, spec, cfg), out, cfg,
                       log=lambda *a, **k: None)["last"])
    yield world, demos[0]
    world.close()


def assert_expert_labels(world, episode):
    for k in range(0, len(episode), 7):
        obs = {key: episode.obs[key][k].astype(float) for key in episode.obs}
        np.testing.assert_allclose(episode.actions[k], world.expert.plan(obs), atol=2e-3)


def test_mixture_labels_are_the_experts_whoever_acts(push_world):
    world, demo = push_world
    (episodes, sources), share = world.collect([3], Mixture(beta=0.0))
    learner = episodes[0]
    assert sources is None and share == 0.0 and set(learner.executed) == {"policy"}
    # the learner drives (another trajectory), the expert labels every state
    n = min(len(learner), len(demo))
    assert not np.allclose(learner.obs["joint_pos"][:n], demo.obs["joint_pos"][:n])
    assert_expert_labels(world, learner)
    clamped = world.mux_filter.clamped_commands
    (episodes, _), share = world.collect([3], Mixture(beta=1.0))
    assert share == 1.0 and episodes[0].success
    assert_expert_labels(world, episodes[0])
    # the expert drove through the command mux, whose action filter holds each joint to the
    # robot's velocity limit per tick, from the last command forwarded: where the expert asked
    # for more (its first tick, from the initial pose, asks for up to 0.3 rad), the executed
    # commands are not the demonstration's
    assert world.mux_filter.clamped_commands > clamped
    n = min(len(episodes[0]), len(demo))
    assert not np.array_equal(episodes[0].obs["joint_pos"][:n], demo.obs["joint_pos"][:n])


def test_the_mux_filter_holds_every_executed_command_to_the_robot_s_limits(push_world):
    """Whoever drives, each executed command of the learning world is within the robot's
    limits and within a velocity limit's tick of the last one (the command mux's filter)."""
    world, _ = push_world
    executed = []
    step = world.env.step

    def record(action):
        executed.append(np.array(action, dtype=np.float64))
        return step(action)

    limits = world.mux_filter.filters[0]
    world.env.step = record
    try:
        for driver in (Mixture(beta=1.0), Mixture(beta=0.5), Gated({})):
            executed.clear()
            (episodes, _), _ = world.collect([11], driver)
            arm = np.array(executed)[:, :7]
            assert np.all(arm >= limits.lower) and np.all(arm <= limits.upper)
            first = episodes[0].obs["joint_pos"][0, :7]  # (kept as float32)
            steps = np.abs(np.diff(np.vstack([first, arm]), axis=0))
            assert np.all(steps[0] <= limits.max_delta + 1e-6), driver
            assert np.all(steps[1:] <= limits.max_delta + 1e-12), driver
    finally:
        world.env.step = step


def test_labels_to_reach():
    curve = [{"labels": 100, "success": 0.2}, {"labels": 300, "success": 0.95},
             {"labels": 200, "success": 0.9}]
    assert labels_to_reach(curve, 0.9) == 200
    assert labels_to_reach(curve, 0.99) is None


def test_the_gate_takes_over_when_stuck_or_backwards_and_hands_back_after_hold():
    gate = InterventionGate(stall_steps=3, stall_distance=0.01, regress=0.02, hold=4,
                            patience=0)

    def obs(x, gap):
        return {"ee_pose": np.array([x, 0, 0.1, 1, 0, 0, 0]),
                "object_pose": np.array([gap, 0, 0, 1, 0, 0, 0]), "goal_pose": np.zeros(7)}

    moving = [gate.expert_drives(obs(0.05 * k, 0.3)) for k in range(6)]
    assert not any(moving)
    stuck = [gate.expert_drives(obs(0.25, 0.3)) for _ in range(8)]
    # still over 3 ticks (from the last moving one) at the 3rd: 4 ticks of expert control,
    # then the policy's stall window starts afresh
    assert stuck == [False, False, True, True, True, True, False, False]
    gate.reset()
    back = [gate.expert_drives(obs(0.05 * k, gap)) for k, gap in
            enumerate([0.30, 0.25, 0.26, 0.28])]
    assert back == [False, False, False, True]  # 3 cm behind its best gap
    gate = InterventionGate(stall_steps=3, hold=2, patience=5, progress=0.01)
    # the arm moves, the object creeps towards the goal by less than 1 cm: no progress
    idle = [gate.expert_drives(obs(0.05 * k, 0.3 - 0.001 * k)) for k in range(10)]
    assert idle == [False] * 6 + [True, True] + [False] * 2  # 5 ticks without progress


def test_gated_collection_labels_only_the_experts_interventions(push_world):
    world, _ = push_world
    cfg = TrainConfig(val_fraction=0.0)
    # a gate that never takes over: the learner drives alone, no label
    never = Gated({"stall_steps": 1000, "regress": 10.0, "patience": 0})
    part, share = world.collect([5], never)
    assert share == 0.0 and part[1] == ["expert"]
    assert [s for e in part[0] for s in e.segments(part[1])] == []
    # the wandering learner gets stuck: the expert takes over, and only those ticks count
    gate = InterventionGate()
    part, share = world.collect([5], Gated({}))
    segments = [s for e in part[0] for s in e.segments(part[1])]
    labels = sum(len(s) for s in segments)
    assert segments and 0 < labels < len(part[0][0]) and 0 < share < 1
    assert all(len(s) <= gate.hold for s in segments)
    for s in segments:
        assert set(s.executed) == {"expert"}
        assert_expert_labels(world, s)
    data = world.dataset([part], world.spec, cfg)
    assert sum(len(e) for e in data.episodes) == labels
