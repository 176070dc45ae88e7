"""The trainer on a CUDA GPU: bf16 autocast, data sampled on the device, checkpoints that load
on the CPU with the same outputs, and an image policy whose uint8 frames stay on the device.

Demonstrations come from the gymnasium version of the tasks (real MuJoCo, the scripted expert),
so these tests need no ROS graph. They skip where PyTorch sees no CUDA device, which is the case
in CI; run them on a GPU machine with ``pytest tests/test_cuda.py``.
"""
import numpy as np
import pytest
import torch

from conftest import synthetic_arrays
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
    n = 64
    data = DeviceData(synthetic_arrays(spec, n, 16), spec, 1, device)
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
    losses = {}
    for shuffle in (False, True):
        # the real labels' run with its loss compiled (the trainer's compile setting)
        cfg = TrainConfig(steps=600, batch_size=64, eval_every=100, eval_episodes=0,
                          device="cuda", seed=0, val_fraction=0.2,
                          compile="none" if shuffle else "default")
        out = tmp_path / f"shuffled_{shuffle}"
        result = train(episodes_dataset(square_episodes(spec, shuffle), spec, cfg), out, cfg,
                       log=print)
        losses[shuffle] = result["best_val_loss"]
        assert result["compiled"] == (not shuffle) and result["cuda_graph"]
        if not shuffle:
            print(f"\nimage policy on the GPU: {result['samples_per_s']:,.0f} frames/s")
    print(f"validation loss: {losses[False]:.2e} (real labels), {losses[True]:.2e} (shuffled)")
    assert losses[False] < 0.3 * losses[True]


# ===================================================================== CUDA graphs
def synthetic_data(spec: Spec, n: int, chunk: int, device) -> DeviceData:
    return DeviceData(synthetic_arrays(spec, n, 100), spec, chunk, device)


def make_taker(spec: Spec, data: DeviceData, family: str, graph: bool, ema: float = 0.0,
               batch_size: int = 512, compile: str = "none", **options):
    from robot_imitation.learning.step import EmaWeights, TrainStep
    from robot_imitation.policies import make_policy

    torch.manual_seed(0)
    cfg = TrainConfig(policy=family, **options)
    policy = make_policy(spec, cfg).to(data.device)
    gen = torch.Generator(device=data.device)
    gen.manual_seed(0)
    return TrainStep(policy, data, batch_size=batch_size, lr=cfg.lr, weight_decay=1e-4,
                     steps=200, shift=cfg.augment_shift, amp=True,
                     ema=EmaWeights(policy, ema) if ema else None, generator=gen, graph=graph,
                     compile=compile)


def test_graph_replays_take_the_eager_steps():
    """The same policy, data and seeds, 40 steps eager and 40 steps of which all but the first
    three replay CUDA graphs: the same batches drawn, the same weights and moving average."""
    spec = Spec.load("push")
    data = synthetic_data(spec, 20_000, 1, torch.device("cuda"))
    runs = {}
    for graph in (False, True):
        taker = make_taker(spec, data, "mlp", graph, ema=0.99)
        drawn, losses = [], []
        for step in range(1, 41):
            loss, _, batch = taker.take(step)
            drawn.append(batch[0].clone())
            losses.append(loss.clone())
        torch.cuda.synchronize()
        assert taker.captured == graph, taker.why_eager
        runs[graph] = (drawn, torch.stack(losses), taker)
    eager, graphed = runs[False], runs[True]
    if hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        assert all(torch.equal(a, b) for a, b in zip(eager[0], graphed[0]))
    for name in ("policy", "ema"):
        a = eager[2].policy if name == "policy" else eager[2].ema.model
        b = graphed[2].policy if name == "policy" else graphed[2].ema.model
        for (key, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
    torch.testing.assert_close(eager[1], graphed[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,spec_name,compile", [
    ("mlp", "push_image", "none"), ("act", "push", "none"), ("act", "push_image", "none"),
    ("diffusion", "push", "none"), ("act", "push_image", "default"),
    ("diffusion", "push_image", "default")])
def test_every_family_trains_in_graphs(family, spec_name, compile):
    """Each policy family's step is captured (randomness of its own included: dropout, the
    CVAE's sample, diffusion's noise and timesteps, the image shift), with its loss compiled
    where asked, and its loss falls."""
    from robot_imitation.policies import policy_class

    spec = Spec.load(spec_name)
    chunk = policy_class(family).config_class.default_chunk if family != "mlp" else 1
    data = synthetic_data(spec, 4_000 if spec.image_observations else 20_000, chunk,
                          torch.device("cuda"))
    taker = make_taker(spec, data, family, True, ema=0.999, batch_size=128, compile=compile)
    losses = [float(taker.take(step)[0]) for step in range(1, 151)]
    assert taker.captured, taker.why_eager
    assert taker.compiled == (compile != "none"), taker.why_uncompiled
    assert all(np.isfinite(losses)) and np.mean(losses[-20:]) < np.mean(losses[:5]), losses


def test_a_compiled_loss_takes_the_uncompiled_steps():
    """A camera policy, the same data and seeds, 30 steps in graphs with the loss compiled and
    not: the same batches drawn, losses that agree to bf16's precision (fused kernels round
    differently) and fall, and actions that training moved alike. (Not every weight agrees: the bias
    of the convolution before the spatial softmax, to which the softmax is blind, has gradients
    of rounding noise only, which AdamW scales to full steps.)"""
    spec = Spec.load("push_image")
    data = synthetic_data(spec, 4_000, 1, torch.device("cuda"))
    obs = data.batch(torch.arange(512, device="cuda"), 0)[0]
    runs = {}
    for compile in ("none", "default"):
        taker = make_taker(spec, data, "mlp", True, batch_size=256, compile=compile)
        with torch.no_grad():
            start = taker.policy.eval().act(obs)
        taker.policy.train()
        drawn, losses = [], []
        for step in range(1, 31):
            loss, _, batch = taker.take(step)
            drawn.append(batch[0].clone())
            losses.append(loss.clone())
        torch.cuda.synchronize()
        assert taker.captured, taker.why_eager
        assert taker.compiled == (compile == "default"), taker.why_uncompiled
        with torch.no_grad():
            actions = taker.policy.eval().act(obs)
        runs[compile] = (drawn, torch.stack(losses).float(), actions, start)
    plain, compiled = runs["none"], runs["default"]
    if hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        assert all(torch.equal(a, b) for a, b in zip(plain[0], compiled[0]))
    torch.testing.assert_close(compiled[1], plain[1], rtol=0.05, atol=1e-3)
    assert compiled[1][-5:].mean() < compiled[1][:5].mean()
    # the two runs moved the policy's actions the same way, to within 10% of the move
    torch.testing.assert_close(compiled[3], plain[3])
    moved = (plain[2] - plain[3]).norm()
    print(f"\nactions after 30 steps, compiled against not: "
          f"{(compiled[2] - plain[2]).norm() / moved:.3f} of what training moved them")
    assert (compiled[2] - plain[2]).norm() <= 0.1 * moved


def test_a_loss_that_does_not_compile_trains_uncompiled_and_says_why(monkeypatch):
    """Compiling fails (here Inductor's compiler raises, as it does on a machine without one):
    the failure is logged once, and the steps go on uncompiled, in graphs, the weights
    moving."""
    import torch._inductor.compile_fx as inductor

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(inductor, "compile_fx", no_compiler)
    torch._dynamo.reset()
    spec = Spec.load("push")
    data = synthetic_data(spec, 5_000, 1, torch.device("cuda"))
    taker = make_taker(spec, data, "mlp", True, compile="default")
    logged = []
    taker.log = logged.append
    before = [p.detach().clone() for p in taker.policy.parameters()]
    losses = [float(taker.take(step)[0]) for step in range(1, 20)]
    torch._dynamo.reset()
    assert not taker.compiled and "no compiler here" in taker.why_uncompiled, logged
    assert len(logged) == 1 and "could not be compiled" in logged[0], logged
    assert taker.captured, taker.why_eager
    assert all(np.isfinite(losses))
    assert any(not torch.equal(a, p) for a, p in zip(before, taker.policy.parameters()))


def test_under_bf16_autocast_the_camera_encoder_runs_in_bf16():
    """Under the trainer's autocast the encoder takes its bf16 path (``forward_in``; autocast
    alone would run each group norm in float32): the same keypoints as that path, close to the
    float32 encoder's, and float32 gradients for its float32 weights."""
    from robot_imitation.policies.encoders import ImageEncoder

    torch.manual_seed(0)
    enc = ImageEncoder(3, [32, 32, 64], 32).cuda()
    frames = torch.randint(0, 256, (16, 96, 96, 3), dtype=torch.uint8, device="cuda")
    full = enc(frames)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = enc(frames)
    torch.testing.assert_close(mixed, enc.forward_in(frames, torch.bfloat16))
    assert mixed.dtype == torch.float32
    assert 0 < (mixed - full).abs().max().item() < 0.05
    mixed.square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in enc.parameters())


def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_why():
    """A loss that reads a value on the host (here ``float``) breaks capture: the failure is
    logged and the steps go on eagerly, the weights still moving."""
    spec = Spec.load("push")
    data = synthetic_data(spec, 5_000, 1, torch.device("cuda"))
    taker = make_taker(spec, data, "mlp", True)
    logged = []
    taker.log = logged.append
    original = taker.policy.loss

    def loss_with_a_sync(batch):
        out = original(batch)
        if float(out) < 0:  # a host synchronization, not allowed while capturing
            raise AssertionError("a negative mse")
        return out

    taker.policy.loss = loss_with_a_sync
    for step in range(1, 6):
        taker.take(step)
    before = [p.detach().clone() for p in taker.policy.parameters()]
    losses = [float(taker.take(step)[0]) for step in range(6, 30)]
    assert not taker.captured and taker.why_eager and len(logged) == 1, logged
    assert "could not be captured" in logged[0] and taker.why_eager in logged[0]
    assert all(np.isfinite(losses))
    assert any(not torch.equal(a, p) for a, p in zip(before, taker.policy.parameters()))


@pytest.mark.slow
def test_the_trainer_replays_graphs_and_reports_it(reach_run):
    _, result = reach_run
    assert result["cuda_graph"] is True
