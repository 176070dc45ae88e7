"""Action statistics of chunked policies: for diffusion, actions relative to the measured
joints are normalized over every step of their chunks, not only the next one, so a chunk's
later actions (further from the joints it is predicted at) stay inside the normalized range
its DDIM step clips its clean estimate to; the trainer takes the family's choice."""
import numpy as np
import torch

from robot_imitation.learning.trainer import DeviceData, TrainConfig, relative_action_stats
from robot_imitation.policies import make_policy
from robot_imitation.policies.config import input_layout
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.spec import Spec


def test_relative_chunk_targets_are_normalized_inside_the_range():
    spec = Spec.load("reach")
    cfg = TrainConfig(policy="diffusion", chunk=8, val_fraction=0.0)
    ds = episodes_dataset(expert_demonstrations("reach", range(4), spec), spec, cfg)
    arrays, relative = ds.arrays("train"), input_layout(spec)["relative"]
    data = DeviceData(arrays, spec, 8, torch.device("cpu"))
    obs, actions, mask = data.batch(torch.arange(data.n))

    def normalized(stats_actions):
        policy = make_policy(spec, cfg)
        policy.set_statistics(spec, {**ds.stats, "actions": stats_actions})
        return policy.normalize_actions(actions, obs)[mask > 0]

    inside = normalized(relative_action_stats(relative, arrays, 8))
    assert float(inside.abs().max()) <= 1.0 + 1e-5
    # the next step's statistics alone (as before): the later chunk steps fall far outside
    assert float(normalized(relative_action_stats(relative, arrays, 1)).abs().max()) > 2.0
    # a chunk of one: the statistics of the single-step targets, as ever
    one = relative_action_stats(relative, arrays, 1)
    single = arrays["actions"].copy()
    single[:, :7] -= arrays["obs"]["joint_pos"][:, :7]
    np.testing.assert_allclose(one.min, single.min(0), atol=1e-6)
    np.testing.assert_allclose(one.max, single.max(0), atol=1e-6)


def test_the_trainer_normalizes_each_family_as_it_declares(tmp_path):
    from robot_imitation.learning.checkpoint import load_checkpoint
    from robot_imitation.learning.trainer import train

    spec = Spec.load("reach")
    episodes = expert_demonstrations("reach", range(3), spec)
    for family, over in (("diffusion", 8), ("act", 1)):
        cfg = TrainConfig(policy=family, chunk=8, steps=1, batch_size=8, eval_every=0,
                          eval_episodes=0, device="cpu", val_fraction=0.0)
        ds = episodes_dataset(episodes, spec, cfg)
        out = train(ds, tmp_path / family, cfg, log=lambda *a, **k: None)
        policy, _ = load_checkpoint(out["last"], spec)
        stats = relative_action_stats(input_layout(spec)["relative"], ds.arrays("train"), over)
        lo, hi = stats.min, stats.max
        torch.testing.assert_close(policy.act_norm.shift, torch.as_tensor(
            (hi + lo) / 2, dtype=torch.float32))
