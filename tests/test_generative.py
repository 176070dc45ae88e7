"""The generative policy families, act (a CVAE action-chunking transformer) and diffusion (a
denoiser over action chunks, DDIM sampling): each trains with the suite's trainer on real
expert episodes, round-trips through a checkpoint (the same chunks: diffusion's sampler has a
fixed seed), runs in the policy node's controller on the fastest backend, and refuses bad
settings."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_imitation.deploy.runtime import load_policy, make_controller
from robot_imitation.learning.checkpoint import load_checkpoint
from robot_imitation.learning.trainer import TrainConfig, train
from robot_imitation.policies import make_policy
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.settings import SettingError
from robot_imitation.spec import Spec

pytestmark = pytest.mark.slow


# family: (training steps, mean error allowed on the first action of each chunk (radians),
# options): small networks (the defaults, several times slower on the CPU, fitted these as
# well; bench/generative.py trains the defaults)
FAMILIES = {"act": (600, 0.02, {"dim_model": 64, "encoder_layers": 1, "feedforward": 256,
                                "dropout": 0.0}),
            "diffusion": (800, 0.06, {"unet_channels": [32, 64], "width": 128})}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def act_run(request, tmp_path_factory):
    """The family trained (chunks of 8) on three scripted reach episodes."""
    family = request.param
    spec = Spec.load("reach")
    episodes = expert_demonstrations("reach", range(3), spec)
    cfg = TrainConfig(policy=family, chunk=8, steps=FAMILIES[family][0], batch_size=64,
                      eval_every=0, eval_episodes=0, device="cpu", val_fraction=0.0,
                      task="reach", seed=1, log_every=50, policy_config=FAMILIES[family][2])
    out = tmp_path_factory.mktemp(family) / "run"
    result = train(episodes_dataset(episodes, spec, cfg), out, cfg, log=lambda *a, **k: None)
    return spec, episodes, result, family


def test_fits_its_demonstrations(act_run):
    spec, episodes, result, family = act_run
    logged = json.loads((Path(result["last"]).parent / "result.json").read_text())
    curve = [loss for _, loss in logged["loss_curve"]]
    assert curve[-1] < 0.3 * curve[0], curve
    policy, meta = load_checkpoint(result["last"], spec)
    assert meta["type"] == family and policy.type_name == family
    ep = episodes[0]
    obs = {k: torch.as_tensor(v) for k, v in ep.obs.items()}
    with torch.no_grad():
        chunks = policy.eval().act(obs).numpy()
    assert chunks.shape == (len(ep), 8, spec.action_dim)
    # the first action of each predicted chunk is the demonstrated one (scale: radians)
    assert np.abs(chunks[:, 0] - ep.actions).mean() < FAMILIES[family][1]


def test_checkpoint_round_trip_and_controller(act_run):
    spec, episodes, result, family = act_run
    policy, _ = load_checkpoint(result["last"], spec)
    again, _ = load_checkpoint(result["last"], spec)
    obs = {k: torch.as_tensor(v[:4]) for k, v in episodes[1].obs.items()}
    with torch.no_grad():
        assert torch.equal(policy.eval().act(obs), again.eval().act(obs))
    # the policy node's way: the fastest backend that agrees with eager PyTorch (every backend
    # but numpy runs the family), its limits, chunked commands
    loaded = load_policy(result["last"], spec, "auto", threads=1)
    timed = {r["backend"]: r["median_us"] for r in loaded.backends if "median_us" in r}
    assert set(timed) == {"eager", "torchscript", "onnxruntime"}, loaded.backends
    assert loaded.backend.kind == min(timed, key=timed.get) and loaded.chunk == 8
    controller, limits = make_controller(loaded, spec)
    tick = controller.tick({k: v[0].astype(float) for k, v in episodes[1].obs.items()})
    assert tick.reason == "ok" and tick.action.shape == (spec.action_dim,)
    assert limits is not None


def test_settings_are_checked():
    spec = Spec.load("reach")
    with pytest.raises(SettingError, match="inference_steps 50 exceeds train_steps 20"):
        make_policy(spec, TrainConfig(policy="diffusion",
                                      policy_config={"train_steps": 20, "inference_steps": 50}))
    with pytest.raises(SettingError, match="dim_model 130"):
        make_policy(spec, TrainConfig(policy="act", policy_config={"dim_model": 130}))
    with pytest.raises(SettingError, match="unknown options"):
        make_policy(spec, TrainConfig(policy="act", policy_config={"hidden_size": 3}))
