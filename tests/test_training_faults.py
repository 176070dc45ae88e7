"""What a training run does with settings that cannot train well: a chunk longer than every
training episode is refused before anything is written; a run whose loss turns NaN stops with
one line and names no NaN checkpoint (a checkpoint with NaN weights is never written); the
training loss of an evaluation row is measured at that step. Real expert episodes of the
gymnasium task, the suite's trainer, no ROS."""
import json
import math

import numpy as np

import pytest
import torch

from robot_imitation.learning.checkpoint import CheckpointError, save_checkpoint
from robot_imitation.learning.trainer import TrainConfig, train
from robot_imitation.policies import make_policy
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.settings import SettingError
from robot_imitation.spec import Spec


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def reach():
    spec = Spec.load("reach")
    return spec, expert_demonstrations("reach", range(2), spec)


@pytest.mark.parametrize("family", ["act", "diffusion"])
def test_a_chunk_longer_than_every_episode_is_refused(reach, tmp_path, family):
    spec, episodes = reach
    longest = max(len(ep) for ep in episodes)
    cfg = TrainConfig(policy=family, chunk=longest + 1, steps=2, batch_size=8, eval_every=0,
                      eval_episodes=0, device="cpu", val_fraction=0.0)
    with pytest.raises(SettingError, match=f"chunk {longest + 1} is longer than every "
                       f"training episode \\(the longest has {longest} steps\\)"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert not (tmp_path / "run").exists()
    # as long as the longest: trained (its last step on that episode only)
    cfg = TrainConfig(policy=family, chunk=longest, steps=2, batch_size=8, eval_every=0,
                      eval_episodes=0, device="cpu", val_fraction=0.0)
    assert train(episodes_dataset(episodes, spec, cfg), tmp_path / "ok", cfg, log=quiet)["last"]


def test_a_diverging_run_stops_and_names_no_nan_checkpoint(reach, tmp_path):
    spec, episodes = reach
    cfg = TrainConfig(policy="act", lr=1.0, steps=60, batch_size=16, log_every=10,
                      eval_every=0, eval_episodes=0, device="cpu", val_fraction=0.0, seed=0,
                      policy_config={"dim_model": 32, "feedforward": 64, "heads": 2})
    with pytest.raises(SettingError, match=r"training diverged: the loss is nan at step \d+ "
                       r"\(lr 0\.\d+\); nothing past the last evaluation is saved"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert not (tmp_path / "run" / "last").exists()
    assert not (tmp_path / "run" / "result.json").exists()


def test_weights_holding_nan_are_never_saved(reach, tmp_path):
    spec, _ = reach
    policy = make_policy(spec, TrainConfig(steps=1, device="cpu"))
    with torch.no_grad():
        next(policy.parameters())[0] = math.nan
    with pytest.raises(CheckpointError, match="not saved: .* holds NaN or infinite values"):
        save_checkpoint(tmp_path / "ckpt", policy, spec)
    assert list(tmp_path.iterdir()) == []


def test_an_evaluation_row_holds_the_loss_measured_at_its_step(reach, tmp_path):
    spec, episodes = reach
    cfg = TrainConfig(steps=20, batch_size=16, log_every=15, eval_every=5, eval_episodes=0,
                      device="cpu", val_fraction=0.0, seed=0)
    result = train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    curve = dict(json.loads((tmp_path / "run" / "result.json").read_text())["loss_curve"])
    assert [row["step"] for row in result["history"]] == [5, 10, 15, 20]
    for row in result["history"]:  # a loss measured at the row's own step (0.0 before)
        assert row["train_loss"] == curve[row["step"]] > 0


def test_an_input_constant_in_the_data_is_scaled_by_1_and_named(reach, tmp_path):
    """reach's target orientation never changes in its demonstrations: divided by a spread of
    1e-6, a 0.1 degree change at deployment was 1,000 standard deviations at the policy's
    input."""
    spec, episodes = reach
    cfg = TrainConfig(steps=2, batch_size=8, eval_every=0, eval_episodes=0, device="cpu",
                      val_fraction=0.0)
    lines = []
    result = train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg,
                   log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert "[train] inputs constant in the training data (scaled by 1): target_pose[3:7]" \
        in lines
    from robot_imitation.learning.checkpoint import load_checkpoint

    policy, _ = load_checkpoint(result["last"], spec)
    keys = [f.key for f in spec.policy_inputs]
    first = sum(int(np.prod(f.shape)) for f in spec.policy_inputs[:keys.index("target_pose")])
    scale = policy.obs_norm.scale[first:first + 7]
    assert torch.equal(scale[3:], torch.ones(4))
    assert bool((scale[:3] < 0.5).all())  # the position varies: scaled by its spread
