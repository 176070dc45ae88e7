"""The generative families on the fast inference backends: act and diffusion (its DDIM sampler
unrolled into one graph) run on TorchScript and ONNX Runtime, which compute what ``Policy.act``
computes on inputs near the training statistics; a checkpoint gives the same chunks on each
backend after a round trip; ``auto`` keeps the fastest backend that agrees. Untrained weights
with statistics: what a backend computes does not depend on training."""
import numpy as np
import pytest
import torch

from robot_imitation.data.dataset import FieldStats
from robot_imitation.deploy.backends import (BackendError, agrees, fill_example, make_backend,
                                             select_backend)
from robot_imitation.learning.checkpoint import load_checkpoint, save_checkpoint
from robot_imitation.learning.config import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.policies.base import statistics_record
from robot_imitation.spec import Spec

# (family, options): diffusion with each denoiser (its default U-Net and the residual MLP)
FAMILIES = (("act", {}), ("diffusion", {}), ("diffusion", {"denoiser": "mlp"}))
RUNS_THEM = ("eager", "torchscript", "onnxruntime")


def reach_statistics(spec: Spec, seed: int = 0) -> dict:
    """Training statistics of the reach spec whose means and spreads differ per element (so a
    backend that skipped or misordered normalization would not agree)."""
    rng = np.random.default_rng(seed)

    def stats(size: int) -> FieldStats:
        return FieldStats.of(rng.normal(rng.normal(0, 1, size), rng.uniform(0.1, 2, size),
                                        (256, size)))

    return {"observations": {f.key: stats(f.shape[0]) for f in spec.policy_inputs},
            "actions": stats(spec.action_dim)}


def untrained(family: str, weights: int = 0, chunk: int = 8, **options):
    """(spec, statistics, an untrained policy of ``family`` for reach with those statistics,
    its weights drawn with the seed ``weights``)."""
    torch.manual_seed(weights)
    spec = Spec.load("reach")
    stats = reach_statistics(spec)
    settings = TrainConfig(policy=family, chunk=chunk, policy_config=options)
    return spec, stats, make_policy(spec, settings, stats).eval()


def act_on(policy, backend) -> np.ndarray:
    """``Policy.act`` on what the backend's input buffer holds, as a backend returns it."""
    low = torch.from_numpy(backend.low.copy())
    obs, at = {}, 0
    for key, size in zip(policy.cfg.low_dim_keys, policy.cfg.low_dim_sizes):
        obs[key], at = low[:, at:at + size], at + size
    with torch.no_grad():
        return policy.act(obs)[0].double().numpy()


@pytest.fixture(scope="module", params=FAMILIES,
                ids=[f + "".join(f"-{v}" for v in o.values()) for f, o in FAMILIES])
def built(request):
    """(family, spec, statistics, an untrained policy, {kind: its backend}, options) for each
    family."""
    family, options = request.param
    spec, stats, policy = untrained(family, **options)
    return (family, spec, stats, policy, {kind: make_backend(policy, kind) for kind in RUNS_THEM},
            options)


def test_traced_backends_compute_policy_act(built):
    family, _, _, policy, backends, options = built
    _, _, other = untrained(family, weights=1, **options)  # other weights, the same statistics
    for kind in ("torchscript", "onnxruntime"):
        backend = backends[kind]
        for seed in range(3):
            fill_example(backend, policy, seed)
            expected, got = act_on(policy, backend), backend.run()
            assert got.shape == (8, policy.cfg.action_dim)
            assert agrees(got, expected), (kind, seed, np.abs(got - expected).max())
            # the agreement is the weights': another network's chunk is far from it
            assert not agrees(act_on(other, backend), expected), (kind, seed)
    with pytest.raises(BackendError, match=f"numpy backend does not run policy type '{family}'"):
        make_backend(policy, "numpy")


def test_checkpoint_gives_the_same_chunks_on_each_backend(built, tmp_path):
    family, spec, stats, policy, backends, _ = built
    path = save_checkpoint(tmp_path / family, policy, spec, statistics_record(spec, stats))
    loaded, meta = load_checkpoint(path, spec)
    assert meta["type"] == family
    for kind, before in backends.items():
        after = make_backend(loaded, kind)
        for seed in range(2):
            fill_example(before, policy, seed)
            fill_example(after, loaded, seed)
            np.testing.assert_array_equal(after.run(), before.run(), err_msg=f"{family} {kind}")


def test_diffusion_noise_comes_from_the_seed_and_is_the_same_for_every_row():
    """The sampler's initial noise is the config's seed's: a loaded checkpoint has it without
    storing it, another seed gives another chunk, and an observation's chunk does not depend on
    where it sits in a batch."""
    _, _, policy = untrained("diffusion")
    _, _, reseeded = untrained("diffusion", seed=1)
    assert "initial_noise" not in policy.state_dict()
    g = torch.Generator().manual_seed(0)
    shift, scale = policy.obs_norm.shift, policy.obs_norm.scale
    low = shift + scale * torch.randn(3, len(shift), generator=g)
    obs, at = {}, 0
    for key, size in zip(policy.cfg.low_dim_keys, policy.cfg.low_dim_sizes):
        obs[key], at = low[:, at:at + size], at + size
    with torch.no_grad():
        chunks = policy.act(obs)
        reversed_rows = policy.act({k: v.flip(0) for k, v in obs.items()})
        alone = policy.act({k: v[1:2] for k, v in obs.items()})
    # float rounding only (a convolution's arithmetic depends on the batch size): the backends'
    # own tolerance; a row that saw another row's noise or input would be off by far more
    torch.testing.assert_close(reversed_rows.flip(0), chunks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone[0], chunks[1], rtol=1e-4, atol=1e-4)
    reseeded.load_state_dict(policy.state_dict())  # the same weights: only the noise differs
    with torch.no_grad():
        other_seed = reseeded.act(obs)
    assert (other_seed - chunks).abs().max() > 1e-3


def test_auto_keeps_the_fastest_backend_that_agrees(built):
    _, _, _, policy, _, _ = built
    backend, rows = select_backend(policy, "auto", calls=30)
    timed = {r["backend"]: r["median_us"] for r in rows if "median_us" in r}
    assert set(timed) == set(RUNS_THEM), rows
    assert backend.kind == min(timed, key=timed.get)
    assert [r["error"] for r in rows if r["backend"] == "numpy"][0].startswith(
        "the numpy backend does not run policy type")
    fill_example(backend, policy, 7)  # an input the selection did not check
    assert agrees(backend.run(), act_on(policy, backend))


@pytest.mark.parametrize("kind", ["auto", "eager", "onnxruntime"])
def test_a_policy_whose_actions_are_not_finite_is_refused_as_such(kind):
    """Finite weights and a normalization scale of 1e-30 (an edited checkpoint, its checksum
    made again): NaN actions, refused as "backend eager disagrees with eager PyTorch by nan"
    (or, asked for eager, not refused at all)."""
    _, _, policy = untrained("act")
    with torch.no_grad():
        policy.obs_norm.scale.fill_(1e-30)
    with pytest.raises(BackendError, match=r"^the policy's actions on an example observation "
                       r"are not finite \(NaN or infinite\)"):
        select_backend(policy, kind, calls=3)
