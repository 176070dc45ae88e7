"""The diffusion family's denoisers and sampler, without training: the 1D temporal U-Net takes
any chunk length (padded to halve evenly, cropped back), mixes the chunk's steps and follows its
condition; the DDIM timesteps start below the schedule's degenerate last step; the options are
checked; a policy.json written before the U-Net became the default still loads (as the residual
MLP it was)."""
import json

import numpy as np
import pytest
import torch

from robot_imitation.learning.checkpoint import load_checkpoint, save_checkpoint
from robot_imitation.learning.config import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.policies.base import statistics_record
from robot_imitation.policies.diffusion import DdimSchedule, DiffusionConfig
from robot_imitation.policies.diffusion.model import UNet1d
from robot_imitation.settings import SettingError
from robot_imitation.spec import Spec

from test_generative_backends import reach_statistics


@pytest.mark.parametrize("levels", [[8], [16, 32], [16, 32, 64]])
def test_unet_takes_any_chunk_length(levels):
    torch.manual_seed(0)
    net = UNet1d(3, 12, levels, 3).eval()
    cond = torch.randn(2, 12)
    for length in range(1, 10):
        x = torch.randn(2, length, 3)
        with torch.no_grad():
            y = net(x, cond)
        assert y.shape == x.shape and torch.isfinite(y).all()


def test_unet_mixes_the_chunk_and_follows_its_condition():
    torch.manual_seed(0)
    net = UNet1d(3, 12, [16, 32], 3).eval()
    x, cond = torch.randn(1, 8, 3), torch.randn(1, 12)
    with torch.no_grad():
        y = net(x, cond)
        moved = x.clone()
        moved[0, 7] += 1.0  # the last step only
        y_moved = net(moved, cond)
        other = net(x, cond + 1.0)
    # a temporal network: the first step's output sees the last step's input
    assert (y_moved[0, 0] - y[0, 0]).abs().max() > 1e-4
    assert (other - y).abs().max() > 1e-3


def test_ddim_timesteps_are_evenly_spaced_from_zero():
    schedule = DdimSchedule(100)
    assert schedule.timesteps(10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert schedule.timesteps(3) == [66, 33, 0]
    assert schedule.timesteps(100) == list(range(99, -1, -1))
    assert schedule.timesteps(1) == [0]
    # more than half of the schedule's steps: spread over all of it, not from its middle
    many = schedule.timesteps(51)
    assert many[0] == 98 and many[-1] == 0 and len(set(many)) == 51
    assert set(-np.diff(many)) == {1, 2}
    # the first step of 10 keeps a signal the float rounding of a clean estimate survives
    assert schedule.alpha_bar[schedule.timesteps(10)[0]] > 1e-2 > schedule.alpha_bar[99]


def test_options_are_checked():
    with pytest.raises(SettingError, match="unet_channels .* multiple of 8"):
        DiffusionConfig(unet_channels=[64, 100])
    with pytest.raises(SettingError, match="kernel_size must be odd, got 4"):
        DiffusionConfig(kernel_size=4)
    with pytest.raises(SettingError, match="denoiser must be one of unet, mlp, got 'conv'"):
        DiffusionConfig(denoiser="conv")
    # the settings known are the fields: not the class's defaults for a run (ClassVars, which
    # were listed, and then refused with a TypeError)
    with pytest.raises(SettingError, match=r"unknown policy settings \['default_chunk'\]") as err:
        DiffusionConfig.from_dict({"default_chunk": 3})
    assert "default_lr" not in str(err.value) and "denoiser" in str(err.value)


def test_a_checkpoint_from_before_the_unet_loads_as_the_mlp_it_was(tmp_path):
    spec = Spec.load("reach")
    stats = reach_statistics(spec)
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig(policy="diffusion", chunk=8,
                                           policy_config={"denoiser": "mlp"}), stats).eval()
    path = save_checkpoint(tmp_path / "old", policy, spec, statistics_record(spec, stats))
    meta_file = path / "policy.json"
    meta = json.loads(meta_file.read_text())
    config = meta["policy"]
    assert config.pop("denoiser") == "mlp"
    assert "unet_channels" in config
    for key in ("unet_channels", "kernel_size"):
        config.pop(key)
    del meta["policy_sha256"]  # (not kept then)
    meta_file.write_text(json.dumps(meta))
    loaded, _ = load_checkpoint(path, spec)
    assert loaded.cfg.denoiser == "mlp"
    obs = {k: torch.as_tensor(stats["observations"][k].mean, dtype=torch.float32)[None]
           for k in policy.cfg.low_dim_keys}
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().act(obs), policy.act(obs))


def test_a_new_run_that_sets_the_width_trains_the_default_unet():
    """`width` is also the U-Net's conditioning width: a run that sets it and no denoiser
    trains the default U-Net (it silently trained the residual MLP, the reading kept for
    policy.json files from before the U-Net only)."""
    spec = Spec.load("reach")
    policy = make_policy(spec, TrainConfig(policy="diffusion", chunk=8,
                                           policy_config={"width": 64}),
                         reach_statistics(spec))
    assert policy.cfg.denoiser == "unet" and policy.cfg.width == 64
    assert any(name.startswith("unet.") for name in policy.state_dict())
