"""Warm start (``TrainConfig.init_from``, DAgger's warm start) for every policy family: the run
starts from the checkpoint's weights, with the new dataset's statistics; a checkpoint of another
family, size or spec is refused by name."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from robot_imitation.learning.checkpoint import CheckpointError, load_checkpoint
from robot_imitation.learning.config import TrainConfig
from robot_imitation.learning.trainer import train
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.spec import Spec

SPEC = Spec.load("reach")
SMALL = {"mlp": {}, "act": {"dim_model": 32, "encoder_layers": 1, "feedforward": 64},
         "diffusion": {"unet_channels": [16, 32]}}


@pytest.fixture(scope="module")
def data():
    episodes = expert_demonstrations("reach", range(6))
    return episodes[:3], episodes[3:]


def fit(episodes, out, family: str, options: dict | None = None, **settings) -> str:
    cfg = TrainConfig(policy=family, policy_config=dict(options or SMALL[family]), task="reach",
                      steps=settings.pop("steps", 20), batch_size=16, eval_every=0,
                      eval_episodes=0, val_fraction=0.0, log_every=1000, **settings)
    result = train(episodes_dataset(episodes, SPEC, cfg), out, cfg, log=lambda *a, **k: None)
    return result["last"]


def weights(path) -> dict:
    policy, _ = load_checkpoint(path, SPEC)
    return {k: v.clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("family", sorted(SMALL))
def test_warm_start_continues_from_the_checkpoint(family, data, tmp_path):
    first, second = data
    start = fit(first, tmp_path / "start", family, seed=1)
    # a step at a learning rate of 1e-9 leaves the weights where they started: the start's
    warm = fit(second, tmp_path / "warm", family, seed=2, init_from=start, steps=1, lr=1e-9)
    cold = fit(second, tmp_path / "cold", family, seed=2, steps=1, lr=1e-9)
    a, w, c = weights(start), weights(warm), weights(cold)
    # the normalization buffers (shift, scale) hold each run's dataset statistics
    learned = [k for k in a if not k.endswith((".shift", ".scale"))]
    assert len(learned) > 4
    far = 0
    for k in learned:
        if a[k].shape != w[k].shape:
            raise AssertionError(k)
        if not torch.allclose(w[k], a[k], atol=1e-6):
            raise AssertionError(f"{k}: the warm start did not begin at the checkpoint's weights")
        far += int(not torch.allclose(c[k], a[k], atol=1e-3))
    assert far > 0  # a cold start is elsewhere: the test can tell the two apart
    # the normalization inside the model is the new dataset's, not the start's
    stats = [k for k in a if k.endswith((".shift", ".scale"))]
    assert stats
    for k in stats:
        torch.testing.assert_close(w[k], c[k])
    assert any(not torch.allclose(w[k], a[k]) for k in stats)


def test_warm_start_from_another_family_size_or_spec_is_refused(data, tmp_path):
    first, _ = data
    act = fit(first, tmp_path / "act", "act")
    with pytest.raises(CheckpointError, match=r"another architecture \(policy act there, "
                       r"diffusion here\)$"):
        fit(first, tmp_path / "x", "diffusion", init_from=act)
    # the one difference named (it was lost in two whole configurations, a line of 1,000
    # characters)
    with pytest.raises(CheckpointError, match=r"another architecture \(dim_model 32 there, "
                       r"64 here\)$"):
        fit(first, tmp_path / "y", "act", {**SMALL["act"], "dim_model": 64}, init_from=act)
    push = Spec.load("push")
    cfg = replace(TrainConfig(policy="act", policy_config=dict(SMALL["act"]), task="push",
                              steps=1, eval_every=0, eval_episodes=0, val_fraction=0.0),
                  init_from=act)
    episodes = expert_demonstrations("push", range(2))
    with pytest.raises(CheckpointError, match="reach"):
        train(episodes_dataset(episodes, push, cfg), tmp_path / "z", cfg,
              log=lambda *a, **k: None)


def test_a_warm_start_may_change_what_changes_no_weights_meaning(data, tmp_path):
    """``--init-from`` with another act ``dropout`` (fine-tuning with more regularization) was
    refused as "another architecture (dropout 0.1 there, 0.0 here)": the weights are the same
    tensors with the same meaning. The settings of training alone (act's dropout and KL weight)
    and of sampling alone (diffusion's inference steps and seed) are now this run's, said in
    the log; anything else that differs is still refused, named alone (mlp's dropout too: its
    dropout layers are modules of their own, which name the weights differently)."""
    first, second = data
    lines = []
    act = fit(first, tmp_path / "act", "act", seed=1)
    options = {**SMALL["act"], "dropout": 0.0, "kl_weight": 1.0}
    cfg = TrainConfig(policy="act", policy_config=options, task="reach", steps=1, lr=1e-9,
                      batch_size=16, eval_every=0, eval_episodes=0, val_fraction=0.0,
                      log_every=1000, init_from=act, seed=2)
    warm = train(episodes_dataset(second, SPEC, cfg), tmp_path / "warm", cfg,
                 log=lambda *a, **k: lines.append(" ".join(map(str, a))))["last"]
    assert ("[train] warm start with this run's dropout 0.0 (the checkpoint's 0.1); "
            "kl_weight 1.0 (the checkpoint's 10.0)") in lines, lines
    policy, _ = load_checkpoint(warm, SPEC)
    assert (policy.cfg.dropout, policy.cfg.kl_weight) == (0.0, 1.0)
    a, w = weights(act), weights(warm)
    assert all(torch.allclose(w[k], a[k], atol=1e-6) for k in a
               if not k.endswith((".shift", ".scale")))
    with pytest.raises(CheckpointError, match=r"another architecture \(heads 4 there, 2 "
                       r"here\)$"):
        fit(second, tmp_path / "act_heads", "act", {**options, "heads": 2}, init_from=act)
    mlp = fit(first, tmp_path / "mlp", "mlp")
    with pytest.raises(CheckpointError, match=r"another architecture \(dropout 0.0 there, "
                       r"0.2 here\)$"):
        fit(second, tmp_path / "mlp_warm", "mlp", dropout=0.2, init_from=mlp)
    diffusion = fit(first, tmp_path / "diffusion", "diffusion")
    fit(second, tmp_path / "diffusion_warm", "diffusion",
        {**SMALL["diffusion"], "inference_steps": 5, "seed": 3}, init_from=diffusion)
