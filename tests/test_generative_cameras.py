"""The generative families on camera observations (spec ``push_image``): act and diffusion take
each camera through the suite's camera encoder, train a few steps with the trainer (random
shift of the frames included) on episodes whose actions are where a square sits in the frame,
round-trip through a checkpoint, and run on every backend that runs them (eager, TorchScript,
ONNX Runtime), each computing ``Policy.act`` with its image input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_imitation.data.dataset import Episode
from robot_imitation.deploy.backends import (BackendError, agrees, fill_example, make_backend,
                                             select_backend)
from robot_imitation.learning.checkpoint import load_checkpoint, save_checkpoint
from robot_imitation.learning.trainer import TrainConfig, train
from robot_imitation.policies import make_policy
from robot_imitation.policies.base import Batch
from robot_imitation.rollouts.gym import episodes_dataset
from robot_imitation.settings import SettingError
from robot_imitation.spec import Spec

FAMILIES = ("act", "diffusion")
# a small encoder keeps two CPU cores quick; the options are the ones mlp has
CAMERA = {"image_channels": [8, 16], "keypoints": 8}
STEPS = {"act": 60, "diffusion": 150}


def square_episodes(spec: Spec, episodes: int = 4, steps: int = 32) -> list:
    """Frames of a bright square on a dark ground; the first two actions are its position, the
    low-dimensional inputs vary at random."""
    image = spec.image_observations[0]
    h, w, c = image.shape
    rng = np.random.default_rng(0)
    out = []
    for e in range(episodes):
        frames = np.full((steps, h, w, c), 20, dtype=np.uint8)
        ys, xs = rng.integers(8, h - 20, steps), rng.integers(8, w - 20, steps)
        for i in range(steps):
            frames[i, ys[i]:ys[i] + 12, xs[i]:xs[i] + 12] = 230
        actions = rng.normal(0, 0.1, (steps, spec.action_dim)).astype(np.float32)
        actions[:, 0], actions[:, 1] = xs / w, ys / h
        obs = {f.key: (frames if f.is_image else rng.normal(0, 1, (steps, *f.shape)))
               for f in spec.observations}
        out.append(Episode(name=f"e{e}", obs=obs, actions=actions,
                           t=np.arange(steps) / spec.control_rate, source="synthetic"))
    return out


def camera_obs(spec: Spec, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f.key: (torch.randint(0, 256, (n, *f.shape), generator=g, dtype=torch.uint8)
                    if f.is_image else torch.randn(n, *f.shape, generator=g))
            for f in spec.observations}


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tmp_path_factory):
    """(family, spec, the trainer's result): 60 steps (diffusion's U-Net 150), chunks of 4,
    frames shifted at random."""
    family = request.param
    spec = Spec.load("push_image")
    cfg = TrainConfig(policy=family, chunk=4, steps=STEPS[family], batch_size=32, eval_every=0,
                      eval_episodes=0, device="cpu", val_fraction=0.0, seed=0, log_every=10,
                      augment_shift=4, policy_config=CAMERA)
    out = tmp_path_factory.mktemp(family) / "run"
    result = train(episodes_dataset(square_episodes(spec), spec, cfg), out, cfg,
                   log=lambda *a, **k: None)
    return family, spec, result


def test_the_camera_reaches_the_loss_and_the_chunk():
    """Every encoder weight gets a gradient from the loss, and another frame (the same
    low-dimensional inputs) gives another chunk."""
    spec = Spec.load("push_image")
    for family in FAMILIES:
        torch.manual_seed(0)
        policy = make_policy(spec, TrainConfig(policy=family, chunk=4, policy_config=CAMERA))
        obs = camera_obs(spec, 8, 0)
        out = policy.loss(Batch(obs, torch.randn(8, 4, spec.action_dim)))
        (out[0] if isinstance(out, tuple) else out).backward()
        grads = [p.grad for p in policy.encoders.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), family
        other = dict(obs, front_image=camera_obs(spec, 8, 1)["front_image"])
        with torch.no_grad():
            a, b = policy.eval().act(obs), policy.act(other)
        assert (a - b).abs().max() > 1e-4, family


@pytest.mark.slow
def test_trains_and_round_trips_through_a_checkpoint(trained, tmp_path):
    family, spec, result = trained
    logged = json.loads((Path(result["last"]).parent / "result.json").read_text())
    # logged every 10 steps (measured: act 4.3 down to 1.0, diffusion 1.08 down to 0.55)
    curve = [loss for _, loss in logged["loss_curve"]]
    assert curve[-1] < 0.6 * curve[0], curve
    policy, meta = load_checkpoint(result["last"], spec)
    assert meta["type"] == family and policy.cfg.image_keys == ["front_image"]
    assert {k: getattr(policy.cfg, k) for k in CAMERA} == CAMERA
    torch.manual_seed(0)
    fresh = make_policy(spec, TrainConfig(policy=family, chunk=4, policy_config=CAMERA))
    assert not torch.equal(policy.encoders["front_image"].net[0].weight,
                           fresh.encoders["front_image"].net[0].weight)  # trained, and stored
    again, _ = load_checkpoint(save_checkpoint(tmp_path / "again", policy, spec), spec)
    obs = camera_obs(spec, 3, 2)
    with torch.no_grad():
        assert torch.equal(policy.act(obs), again.eval().act(obs))


@pytest.mark.slow
def test_every_backend_runs_it_with_its_image_input(trained):
    """Eager, TorchScript and ONNX Runtime each compute ``Policy.act`` of the frame in their
    image buffer (another frame gives another chunk); numpy declines in one line."""
    family, spec, result = trained
    policy, _ = load_checkpoint(result["last"], spec)
    for kind in ("eager", "torchscript", "onnxruntime"):
        backend = make_backend(policy, kind)
        chunks = []
        for seed in range(2):
            fill_example(backend, policy, seed)
            obs, at = {k: torch.from_numpy(v.copy()) for k, v in backend.images.items()}, 0
            for key, size in zip(policy.cfg.low_dim_keys, policy.cfg.low_dim_sizes):
                obs[key], at = torch.from_numpy(backend.low[:, at:at + size].copy()), at + size
            with torch.no_grad():
                expected = policy.act(obs)[0].double().numpy()
            got = backend.run()
            assert agrees(got, expected), (kind, np.abs(got - expected).max())
            chunks.append(got)
        assert not agrees(chunks[0], chunks[1]), kind
    with pytest.raises(BackendError, match=f"does not run policy type '{family}'"):
        make_backend(policy, "numpy")
    chosen, rows = select_backend(policy, "auto", calls=20)
    timed = {r["backend"]: r["median_us"] for r in rows if "median_us" in r}
    assert set(timed) == {"eager", "torchscript", "onnxruntime"}, rows
    assert chosen.kind == min(timed, key=timed.get)


def test_camera_options_are_checked():
    spec = Spec.load("push_image")
    for family in FAMILIES:
        with pytest.raises(SettingError, match=r"image_channels \[8, 12\].*not \[12\]"):
            make_policy(spec, TrainConfig(policy=family,
                                          policy_config={"image_channels": [8, 12]}))
        with pytest.raises(SettingError, match="keypoints"):
            make_policy(spec, TrainConfig(policy=family, policy_config={"keypoints": 0}))
