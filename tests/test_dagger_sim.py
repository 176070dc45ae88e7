"""The no-ROS DAgger core used by the benchmark: labels are always the expert's."""
import numpy as np
import pytest

from robot_imitation.learning.dagger_sim import fit, labels_to_reach, rollout
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.sim.env import ImitationEnv
from robot_imitation.sim.experts import make_expert
from robot_imitation.spec import Spec


@pytest.mark.slow
def test_rollout_labels_are_the_experts_whoever_acts(tmp_path):
    spec = Spec.load("push")
    env = ImitationEnv("push")
    expert = make_expert(env.sim)
    demo = rollout(env, expert, spec, seed=3)
    assert demo.success and demo.actions.shape == (len(demo), spec.action_dim)
    policy = fit([demo], spec, tmp_path / "fit", TrainConfig(
        steps=20, eval_every=0, eval_episodes=0, device="cpu", val_fraction=0.0))
    learner = rollout(env, expert, spec, seed=3, policy=policy, beta=0.0)
    # the untrained learner drives (a different trajectory), the expert labels every state
    n = min(len(learner), len(demo))
    assert not np.allclose(learner.obs["joint_pos"][:n], demo.obs["joint_pos"][:n])
    for k in range(0, len(learner), 7):
        obs = {key: learner.obs[key][k].astype(float) for key in learner.obs}
        np.testing.assert_allclose(learner.actions[k], expert(obs), atol=2e-3)


def test_labels_to_reach():
    curve = [{"labels": 100, "success": 0.2}, {"labels": 300, "success": 0.95},
             {"labels": 200, "success": 0.9}]
    assert labels_to_reach(curve, 0.9) == 200
    assert labels_to_reach(curve, 0.99) is None


class ExpertAsPolicy:
    """The scripted expert behind the policy interface: a learner that makes no mistakes."""

    def __init__(self, expert, spec):
        self.expert, self.keys = expert, [f.key for f in spec.observations]

    def act(self, obs):
        import torch

        action = self.expert({k: obs[k][0].double().numpy() for k in self.keys})
        return torch.as_tensor(action)[None, None]


def test_the_gate_takes_over_when_stuck_or_backwards_and_hands_back_after_hold():
    from robot_imitation.learning.dagger_sim import InterventionGate

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


def test_gated_rollouts_label_only_the_experts_interventions(tmp_path):
    from robot_imitation.learning.dagger_sim import InterventionGate, gated_rollout

    spec = Spec.load("push")
    env = ImitationEnv("push")
    expert = make_expert(env.sim)
    gate = InterventionGate()
    # a learner that never errs drives alone: no intervention, no label, the task solved
    segments, ok, ticks = gated_rollout(env, expert, spec, 5, ExpertAsPolicy(expert, spec), gate)
    assert ok and segments == [] and ticks > 10
    # an untrained learner gets stuck: the expert takes over, and only those ticks are labelled
    demo = rollout(env, expert, spec, seed=3)
    policy = fit([demo], spec, tmp_path / "fit", TrainConfig(
        steps=5, eval_every=0, eval_episodes=0, device="cpu", val_fraction=0.0))
    segments, ok, ticks = gated_rollout(env, expert, spec, 5, policy, gate)
    labels = sum(len(s) for s in segments)
    assert segments and 0 < labels < ticks
    assert all(len(s) <= gate.hold for s in segments)
    for s in segments:
        for k in range(len(s)):
            obs = {key: s.obs[key][k].astype(float) for key in s.obs}
            np.testing.assert_allclose(s.actions[k], expert(obs), atol=2e-3)
