"""The trainer on a CUDA GPU: bf16 autocast, data sampled on the device, checkpoints that load
on the CPU with the same outputs, and an image policy whose uint8 frames stay on the device.

Demonstrations come from the gymnasium version of the tasks (real MuJoCo, the scripted expert),
so these tests need no ROS graph. They skip where PyTorch sees no CUDA device, which is the case
in CI; run them on a GPU machine with ``pytest tests/test_cuda.py``.
"""
import numpy as np
import pytest
import torch

from robot_imitation.learning.checkpoint import load_checkpoint
from robot_imitation.rollouts.gym import episodes_dataset
from robot_imitation.learning.evaluation import evaluate_policy
from robot_imitation.learning.trainer import DeviceData, TrainConfig, random_shift, train
from robot_imitation.spec import Spec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]


def expert_episodes(task: str, n: int, seed: int) -> list:
    from robot_imitation.rollouts.gym import expert_demonstrations

    return expert_demonstrations(task, range(seed, seed + n))


@pytest.fixture(scope="module")
def reach_run(tmp_path_factory):
    """BC on 80 scripted-expert reach episodes, trained on the GPU with bf16 autocast."""
    spec = Spec.load("reach")
    out = tmp_path_factory.mktemp("cuda_reach") / "run"
    cfg = TrainConfig(steps=3000, eval_every=1000, eval_episodes=20, device="cuda", seed=0,
                      task="reach")
    result = train(episodes_dataset(expert_episodes("reach", 80, 300), spec, cfg), out, cfg,
                   log=print)
    return spec, result


@pytest.mark.slow
def test_bc_trains_on_the_gpu_and_succeeds_in_closed_loop(reach_run):
    spec, result = reach_run
    assert result["device"].startswith("cuda")
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    policy, meta = load_checkpoint(result["best"], spec)  # loaded on the CPU
    assert meta["training"]["device"] == "cuda" and meta["training"]["amp"]
    score = evaluate_policy(policy, spec, "reach", episodes=50, seed=50_000)
    print(f"\nBC on reach trained on {torch.cuda.get_device_name()}: "
          f"{score['successes']}/50 closed-loop successes, "
          f"{result['samples_per_s']:,.0f} samples/s, data share {result['data_share']:.1%}")
    assert score["success_rate"] >= 0.9


@pytest.mark.slow
def test_a_gpu_checkpoint_gives_the_same_actions_on_cpu_and_gpu(reach_run):
    spec, result = reach_run
    cpu, _ = load_checkpoint(result["last"], spec)
    gpu, _ = load_checkpoint(result["last"], spec, device="cuda")
    assert next(gpu.parameters()).is_cuda and not next(cpu.parameters()).is_cuda
    g = torch.Generator().manual_seed(3)
    obs = {f.key: torch.randn(64, *f.shape, generator=g) for f in spec.observations}
    with torch.no_grad():
        a_cpu = cpu.act(obs)
        a_gpu = gpu.act({k: v.cuda() for k, v in obs.items()}).cpu()
    assert torch.isfinite(a_cpu).all()
    err = (a_gpu - a_cpu).norm() / a_cpu.norm()
    assert err < 1e-4, f"relative difference {err:.2e} between CPU and GPU actions"


def test_image_frames_stay_uint8_on_the_gpu_and_train():
    spec = Spec.load("push_image")
    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    n = 64
    arrays = {"obs": {f.key: (rng.integers(0, 256, (n, *f.shape), dtype=np.uint8)
                              if f.is_image else rng.standard_normal((n, *f.shape)))
                      for f in spec.observations},
              "actions": rng.uniform(-1, 1, (n, spec.action_dim)),
              "episode": np.arange(n) // 16}
    data = DeviceData(arrays, spec, 1, device)
    image = spec.image_observations[0].key
    assert data.obs[image].dtype == torch.uint8 and data.obs[image].is_cuda
    obs, actions, _ = data.batch(torch.randint(0, n, (32,), device=device), shift=4)
    assert obs[image].dtype == torch.uint8 and obs[image].is_cuda and actions.is_cuda
    shifted = random_shift(data.obs[image][:8], 4)
    # a shift moves pixels, it does not invent values: every output pixel is an input pixel
    assert shifted.is_cuda and set(shifted.unique().tolist()) <= set(
        data.obs[image][:8].unique().tolist())


def square_episodes(spec: Spec, shuffle: bool) -> list:
    """Frames of a bright square on a dark ground; the first two actions are its position
    (with ``shuffle``, another frame's: nothing to learn). Low-dimensional inputs are constant,
    so the pixels are the only source of the answer."""
    from robot_imitation.data.dataset import Episode

    image = spec.image_observations[0]
    h, w, c = image.shape
    rng = np.random.default_rng(0)
    episodes = []
    for e in range(12):
        n = 64
        frames = np.full((n, h, w, c), 20, dtype=np.uint8)
        ys, xs = rng.integers(8, h - 20, n), rng.integers(8, w - 20, n)
        for i in range(n):
            frames[i, ys[i]:ys[i] + 12, xs[i]:xs[i] + 12] = 230
        actions = np.zeros((n, spec.action_dim), dtype=np.float32)
        actions[:, 0], actions[:, 1] = xs / w, ys / h
        if shuffle:
            actions = actions[rng.permutation(n)]
        obs = {f.key: (frames if f.is_image else np.zeros((n, *f.shape), dtype=np.float32))
               for f in spec.observations}
        episodes.append(Episode(name=f"e{e}", obs=obs, actions=actions,
                                t=np.arange(n) / spec.control_rate, source="synthetic"))
    return episodes


@pytest.mark.slow
def test_image_policy_learns_from_frames_on_the_gpu(tmp_path):
    """The camera policy, trained by the trainer on the GPU (bf16, random shift), learns where
    the square sits: its validation loss ends far below that of the same run on shuffled
    labels, which can do no better than predicting the mean."""
    spec = Spec.load("push_image")
    cfg = TrainConfig(steps=600, batch_size=64, eval_every=100, eval_episodes=0,
                      device="cuda", seed=0, val_fraction=0.2)
    losses = {}
    for shuffle in (False, True):
        out = tmp_path / f"shuffled_{shuffle}"
        result = train(episodes_dataset(square_episodes(spec, shuffle), spec, cfg), out, cfg,
                       log=print)
        losses[shuffle] = result["best_val_loss"]
        if not shuffle:
            print(f"\nimage policy on the GPU: {result['samples_per_s']:,.0f} frames/s")
    print(f"validation loss: {losses[False]:.2e} (real labels), {losses[True]:.2e} (shuffled)")
    assert losses[False] < 0.3 * losses[True]
