"""The trainer's moving average of the weights (``--ema``): the update rule, and checkpoints
holding the average, not the last step's weights."""
import torch

from robot_imitation.learning.checkpoint import load_checkpoint
from robot_imitation.learning.trainer import EmaWeights, TrainConfig, train
from robot_imitation.policies import make_policy
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.spec import Spec


def test_the_average_follows_its_rule():
    spec = Spec.load("reach")
    policy = make_policy(spec, TrainConfig(policy="mlp"))
    ema = EmaWeights(policy, 0.9)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    ema.update(1000)  # d = min(0.9, 1001 / 1010) = 0.9
    for avg, old, new in zip(ema.model.parameters(), before, policy.parameters()):
        torch.testing.assert_close(avg, 0.9 * old + 0.1 * new)
    ema.update(0)     # warm-up: d = 1 / 10
    for avg, new in zip(ema.model.parameters(), policy.parameters()):
        assert not avg.requires_grad and float((avg - new).abs().max()) < 0.2


def test_checkpoints_hold_the_average(tmp_path):
    spec = Spec.load("reach")
    episodes = expert_demonstrations("reach", range(2), spec)
    weights = {}
    for ema in (0.0, 0.9):
        cfg = TrainConfig(steps=20, batch_size=32, eval_every=0, eval_episodes=0,
                          device="cpu", val_fraction=0.0, seed=0, ema=ema)
        out = train(episodes_dataset(episodes, spec, cfg), tmp_path / f"ema{ema}", cfg,
                    log=lambda *a, **k: None)
        policy, meta = load_checkpoint(out["last"], spec)
        assert meta["training"]["ema"] == ema
        weights[ema] = torch.cat([p.flatten() for p in policy.parameters()])
    assert not torch.allclose(weights[0.0], weights[0.9])
