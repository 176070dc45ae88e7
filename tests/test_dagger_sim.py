"""The no-ROS DAgger core used by the benchmark: labels are always the expert's."""
import numpy as np

from robot_imitation.learning.dagger_sim import fit, labels_to_reach, rollout
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.sim.env import ImitationEnv
from robot_imitation.sim.experts import make_expert
from robot_imitation.spec import Spec


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
