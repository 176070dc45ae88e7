"""Behavior Cloning: training, closed-loop success, checkpoints (real data, real MuJoCo)."""
import hashlib
import json
import re
import struct
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_arrays
from robot_imitation.data.dataset import Dataset, build_dataset, compute_stats
from robot_imitation.learning.checkpoint import (CheckpointError, load_checkpoint,
                                                 save_checkpoint)
from robot_imitation.learning.evaluation import evaluate_policy
from robot_imitation.learning.policies import Batch, Policy, PolicyConfig
from robot_imitation.learning.trainer import (DeviceData, TrainConfig, policy_config,
                                              random_shift, train)
from robot_imitation.policies import make_policy
from robot_imitation.spec import Spec

ROOT = Path(__file__).resolve().parents[1]


def small_dataset(root, n: int) -> Dataset:
    full = build_dataset(root, val_fraction=0.1, seed=0)
    episodes = full.episodes[:n]
    return Dataset(path=full.path, spec=full.spec, episodes=episodes, train=episodes,
                   val=episodes[:1], stats=compute_stats(full.spec, episodes), decoded=[])


@pytest.mark.ros
@pytest.mark.slow
def test_overfits_a_tiny_dataset(reach_demos, tmp_path):
    data = small_dataset(reach_demos, 2)
    cfg = TrainConfig(steps=1500, batch_size=64, lr=3e-3, eval_every=0, eval_episodes=0,
                      device="cpu", seed=1)
    result = train(data, tmp_path / "run", cfg)
    assert result["history"][-1]["train_loss"] < 1e-3
    assert result["best_val_loss"] < 1e-3  # the validation episode is a training one here
    assert (tmp_path / "run" / "log.csv").is_file() and (tmp_path / "run" / "loss.png").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.ros
@pytest.mark.slow
def test_bc_on_reach_demonstrations_succeeds_in_closed_loop(reach_bc):
    """The user's way (`robot-imitation train`, in the fixture), then 50 closed-loop episodes
    of the gymnasium task."""
    result = json.loads((reach_bc / "result.json").read_text())
    policy, meta = load_checkpoint(result["best"], Spec.load("reach"))
    assert meta["task"] == "reach"
    score = evaluate_policy(policy, Spec.load("reach"), "reach", episodes=50, seed=50_000)
    print(f"\nBC on reach: {score['successes']}/50 closed-loop successes")
    assert score["success_rate"] >= 0.9


@pytest.fixture(scope="module")
def trained(reach_demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(steps=200, batch_size=64, eval_every=0, eval_episodes=0, device="cpu")
    result = train(small_dataset(reach_demos, 4), out, cfg)
    return Path(result["last"])


def random_obs(spec: Spec, batch: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f.key: torch.randn(batch, *f.shape, generator=g, dtype=torch.float64)
            for f in spec.observations}


@pytest.mark.ros
@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_outputs(trained, tmp_path):
    policy, meta = load_checkpoint(trained, Spec.load("reach"))
    obs = random_obs(Spec.load("reach"))
    copy = save_checkpoint(tmp_path / "copy", policy, Spec.load("reach"),
                           stats=meta["normalization"], train_config=meta["training"])
    again, _ = load_checkpoint(copy, Spec.load("reach"))
    assert torch.equal(policy.act(obs), again.act(obs))
    assert set(p.name for p in trained.iterdir()) == {"model.safetensors", "policy.json"}
    assert meta["spec_fingerprint"] == Spec.load("reach").fingerprint()
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["dataset_fingerprint"] and meta["normalization"]["actions"]["mean"]


@pytest.mark.ros
@pytest.mark.slow
def test_mismatched_spec_is_refused_naming_the_difference(trained):
    with pytest.raises(CheckpointError, match=r"observation 'object_pose' was not in training"):
        load_checkpoint(trained, Spec.load("push"))
    reordered = Spec.load("reach").to_dict()
    reordered["observations"][0]["joints"] = list(reversed(reordered["observations"][0]["joints"]))
    with pytest.raises(CheckpointError, match=r"joint_pos': joints"):
        load_checkpoint(trained, Spec.from_dict(reordered))


def copy_of(trained, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(trained, dst)
    return dst


@pytest.mark.ros
@pytest.mark.slow
def test_corrupted_checkpoints_are_refused(trained, tmp_path):
    ckpt = copy_of(trained, tmp_path)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ckpt)
    weights.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(ckpt)
    # one flipped bit in a weight: a well-formed file, a finite value, and it loaded (one
    # normalization value or weight silently changed); policy.json now keeps the checksum
    flipped = bytearray(data)
    flipped[-4] ^= 1
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{weights} does not match the checksum its policy.json keeps (weights_sha256): "
            "damaged or replaced since it was written")):
        load_checkpoint(ckpt)
    meta = json.loads((trained / "policy.json").read_text())
    assert len(meta.pop("weights_sha256")) == 64
    (ckpt / "policy.json").write_text(json.dumps(meta))
    load_checkpoint(ckpt)  # written before checksums were kept: nothing to check it against
    meta = json.loads((trained / "policy.json").read_text())
    meta["spec"]["control_rate"] = 10.0
    shutil.copy(trained / "model.safetensors", weights)
    (ckpt / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(ckpt)
    (ckpt / "policy.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)
    # hand edits of policy.json that were tracebacks (TypeError, KeyError, RuntimeError inside
    # the model), or ran with joint velocities fed in as positions without a word
    meta = json.loads((trained / "policy.json").read_text())
    keys = meta["policy"]["low_dim_keys"]
    edits = [({"version": "2"}, None, "version must be a whole number, got '2'"),
             ({"spec": None}, None, "spec must be a mapping, got None"),
             (None, {"chunk": -3}, "policy chunk must be a positive whole number, got -3"),
             (None, {"relative": [[0, 7, "nosuch"]]}, "policy relative [[0, 7, 'nosuch']] is "
              "not what its spec gives"),
             (None, {"low_dim_keys": [keys[1], keys[0], *keys[2:]]},
              f"policy low_dim_keys {[keys[1], keys[0], *keys[2:]]!r} is not what its spec "
              "gives")]
    for top, policy, says in edits:
        edited = json.loads(json.dumps(meta))
        edited.update(top or {})
        edited["policy"].update(policy or {})
        (ckpt / "policy.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match=re.escape(f"{ckpt / 'policy.json'}: {says}")):
            load_checkpoint(ckpt)


@pytest.mark.ros
@pytest.mark.slow
def test_a_pickle_is_never_loaded(trained, tmp_path):
    ckpt = copy_of(trained, tmp_path)
    policy, _ = load_checkpoint(trained)
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"weights": policy.state_dict(), "evil": Evil()}, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save(policy.state_dict(), ckpt / "model.pt")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    # and nothing in the package unpickles: no torch.load / pickle.load anywhere
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        assert "torch.load(" not in text and "pickle.load" not in text, path


def _with_header_length(weights: Path, length: int) -> None:
    """Rewrite a safetensors file so that its JSON header is ``length`` bytes (padded with
    spaces, as safetensors pads its own): the same tensors, another 8-byte length."""
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + n].rstrip(b" ")
    assert len(header) <= length
    weights.write_bytes(struct.pack("<Q", length) + header + b" " * (length - len(header))
                        + data[8 + n:])


@pytest.mark.parametrize("length", [0x0B80, 0x4B50, 0x0580])
def test_a_safetensors_file_loads_whatever_its_header_length(tmp_path, length):
    """The 8-byte header length of a valid safetensors file may start with 0x80 or "PK" (the
    first bytes of a pickle and of a zip): such a file is no pickle. About one architecture
    in 256 writes one (a diffusion U-Net's header of 0x0B80 bytes, refused before)."""
    spec = Spec.load("reach")
    policy = Policy(policy_config(spec, TrainConfig(steps=1, device="cpu")))
    ckpt = save_checkpoint(tmp_path / "ckpt", policy, spec)
    weights = ckpt / "model.safetensors"
    _with_header_length(weights, length)
    assert weights.read_bytes()[:2] == struct.pack("<H", length)
    meta = json.loads((ckpt / "policy.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (ckpt / "policy.json").write_text(json.dumps(meta))
    again, _ = load_checkpoint(ckpt, spec)
    obs = random_obs(spec)
    assert torch.equal(policy.eval().act(obs), again.act(obs))
    # a pickle is still refused, in both of torch.save's formats
    for zipped in (True, False):
        torch.save(policy.state_dict(), weights, _use_new_zipfile_serialization=zipped)
        with pytest.raises(CheckpointError, match="is a pickle"):
            load_checkpoint(ckpt, spec)


@pytest.mark.parametrize("family,edit", [("act", {"heads": 4}),
                                          ("diffusion", {"train_steps": 50}),
                                          ("diffusion", {"seed": 7})])
def test_a_policy_setting_edited_in_policy_json_is_refused(tmp_path, family, edit):
    """Settings that change no tensor's shape change what the weights compute (attention split
    another way, another noise schedule or initial noise): an edit loaded without a word."""
    spec = Spec.load("reach")
    cfg = TrainConfig(policy=family, chunk=8, steps=1, device="cpu",
                      policy_config={"dim_model": 32, "heads": 2} if family == "act" else {})
    policy = make_policy(spec, cfg)
    ckpt = save_checkpoint(tmp_path / "ckpt", policy, spec)
    load_checkpoint(ckpt, spec)  # as written: loads
    meta_file = ckpt / "policy.json"
    meta = json.loads(meta_file.read_text())
    meta["policy"].update(edit)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{meta_file}: its type and policy settings do not match the checksum it keeps")):
        load_checkpoint(ckpt, spec)
    # a checkpoint written before the checksum was kept loads as it is
    del meta["policy_sha256"]
    meta_file.write_text(json.dumps(meta))
    assert load_checkpoint(ckpt, spec)[0].cfg.to_dict()[next(iter(edit))] == next(
        iter(edit.values()))


@pytest.mark.parametrize("head", ["mse", "gaussian", "gmm"])
@pytest.mark.ros
@pytest.mark.slow
def test_continuous_heads_learn_and_act_in_chunks(reach_demos, head):
    data = small_dataset(reach_demos, 3)
    spec = data.spec
    cfg = TrainConfig(head=head, chunk=4, steps=1, device="cpu")
    policy = Policy(policy_config(spec, cfg))
    train_data = DeviceData(data.arrays("train"), spec, 4, torch.device("cpu"))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    index = torch.arange(min(128, train_data.n))
    obs, actions, mask = train_data.batch(index)
    assert actions.shape == (len(index), 4, 8) and mask.shape == (len(index), 4)
    first = None
    for _ in range(60):
        loss = policy.loss(Batch(obs, actions, mask))
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    chunk = policy.act(obs)
    assert chunk.shape == (len(index), 4, 8) and torch.isfinite(chunk).all()


def test_chunk_targets_stay_inside_their_episode():
    arrays = {"obs": {"x": np.arange(6, dtype=float)[:, None]},
              "actions": np.arange(6, dtype=float)[:, None],
              "episode": np.array([0, 0, 0, 1, 1, 1])}
    spec = Spec.from_dict({"name": "t", "control_rate": 1, "observations": [
        {"key": "x", "topic": "/x", "type": "std_msgs/msg/Float64MultiArray", "field": "data",
         "size": 1}], "actions": [{"key": "u", "topic": "/u",
                                   "type": "std_msgs/msg/Float64MultiArray", "field": "data",
                                   "size": 1}]})
    data = DeviceData(arrays, spec, 3, torch.device("cpu"))
    _, actions, mask = data.batch(torch.arange(6))
    assert actions[1, :, 0].tolist() == [1, 2, 2] and mask[1].tolist() == [1, 1, 0]
    assert actions[3, :, 0].tolist() == [3, 4, 5] and mask[3].tolist() == [1, 1, 1]


@pytest.mark.slow
def test_categorical_head_learns_discrete_actions():
    cfg = PolicyConfig(low_dim_keys=["x"], low_dim_sizes=[2], action_dim=1, head="categorical",
                       num_classes=3, hidden=[32])
    policy = Policy(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    labels = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(300):
        loss = policy.loss(Batch({"x": x}, labels[:, None, None].float()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (policy.act({"x": x})[:, 0, 0] == labels).float().mean()
    assert accuracy > 0.9


def replicate_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """The random shift written out plainly: float frames padded by repeating their edges,
    each cut at its offset (drawn across, then down, as the trainer draws them)."""
    b, h, w, _ = images.shape
    x = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (pad,) * 4,
                                mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,))
    dy = torch.randint(0, 2 * pad + 1, (b,))
    return torch.stack([x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)]
                       ).permute(0, 2, 3, 1).to(images.dtype)


@pytest.mark.parametrize("pad", [1, 4])
def test_a_batchs_frames_are_shifted_in_one_gather_as_by_replicate_padding(pad):
    """``DeviceData.batch`` takes a batch's shifted frames in one gather from the uint8 frames
    (``shifted_frames``): the frames a replicate-padded float copy cut at the same offsets
    gives, pixel for pixel, in uint8; ``random_shift`` of a gathered batch the same."""
    from robot_imitation.learning.trainer import DeviceData, random_shift

    spec = Spec.load("push_image")
    n = 40
    data = DeviceData(synthetic_arrays(spec, n, 10, seed=pad), spec, 1, torch.device("cpu"))
    key = spec.image_observations[0].key
    index = torch.as_tensor(np.random.default_rng(pad).integers(0, n, 16))
    torch.manual_seed(7)
    got = data.batch(index, shift=pad)[0][key]
    torch.manual_seed(7)
    want = replicate_shift(data.obs[key][index], pad)
    assert got.dtype == torch.uint8 and got.shape == (16, *spec.image_observations[0].shape)
    assert torch.equal(got, want)
    assert not torch.equal(got, data.obs[key][index])  # moved
    torch.manual_seed(7)
    assert torch.equal(random_shift(data.obs[key][index], pad), want)


def test_image_policy_trains_on_uint8_frames():
    spec = Spec.load("push_image")
    cfg = TrainConfig(steps=1, device="cpu")
    policy = Policy(policy_config(spec, cfg))
    g = torch.Generator().manual_seed(0)
    obs = {f.key: (torch.randint(0, 255, (8, *f.shape), generator=g, dtype=torch.uint8)
                   if f.is_image else torch.randn(8, *f.shape, generator=g))
           for f in spec.observations}
    shifted = random_shift(obs["front_image"], 4)
    assert shifted.shape == obs["front_image"].shape and shifted.dtype == torch.uint8
    actions = torch.randn(8, 1, spec.action_dim, generator=g)
    loss = policy.loss(Batch(obs, actions))
    loss.backward()
    grads = [p.grad for p in policy.encoders.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert policy.act(obs).shape == (8, 1, spec.action_dim)
