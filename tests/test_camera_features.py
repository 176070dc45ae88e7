"""Camera features computed once per frame: every backend runs a policy with cameras as each
camera's encoder and a head (``split_policy``), and the controller encodes a frame once however
many ticks use it, on the tick ("inline", exact), ahead of it on a thread of its own ("ahead":
no tick waits for an encoder) or between the ticks a stage at a time ("between"). Real policies
of each family on spec ``push_image``, random weights; no ROS."""
import os
import threading
import time

import numpy as np
import pytest
import torch

from robot_imitation.deploy.backends import (KINDS, STAGE_MACS, BackendError, agrees,
                                             fill_example, make_backend, select_backend,
                                             split_policy)
from robot_imitation.deploy.runtime import LoadedPolicy, make_controller
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.policies.encoders import ImageEncoder, encoder_stages
from robot_imitation.policies.mlp.model import MlpPolicy
from robot_imitation.spec import Spec

SPEC = Spec.load("push_image")
CAMERA = {"image_channels": [8, 16], "keypoints": 8}
FAMILIES = ("mlp", "act", "diffusion")


def image_policy(family: str, chunk: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    policy = make_policy(SPEC, TrainConfig(policy=family, chunk=chunk, policy_config=CAMERA))
    n = policy.cfg.input_dim
    policy.obs_norm.set(torch.randn(n), torch.rand(n) + 0.5)
    policy.act_norm.set(torch.randn(policy.cfg.action_dim), torch.rand(policy.cfg.action_dim) + 0.5)
    return policy.eval()


def act_of(policy, low: np.ndarray, frames: dict) -> np.ndarray:
    obs, at = {k: torch.from_numpy(np.ascontiguousarray(v[None])) for k, v in frames.items()}, 0
    for key, size in zip(policy.cfg.low_dim_keys, policy.cfg.low_dim_sizes):
        obs[key], at = torch.from_numpy(low[None, at:at + size].astype(np.float32)), at + size
    with torch.no_grad():
        return policy.act(obs)[0].double().numpy()


def frames(n: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    f = SPEC.image_observations[0]
    return [rng.integers(0, 256, f.shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_backend_runs_the_head_on_features_encoded_apart(family):
    """Split on eager, TorchScript and ONNX Runtime: ``run`` is ``Policy.act``; the head reads
    the features, not the image buffer (a new frame in the buffer changes nothing until it is
    encoded); encoding it gives the new frame's act."""
    policy = image_policy(family)
    key = SPEC.image_observations[0].key
    a, b = frames(2)
    for kind in ("eager", "torchscript", "onnxruntime"):
        backend = make_backend(policy, kind)
        assert backend.split and set(backend.features) == {key}, kind
        fill_example(backend, policy, 0)
        backend.images[key][0] = a
        low = backend.low[0].copy()
        first = backend.run()
        assert agrees(first, act_of(policy, low, {key: a}), 1e-5, 1e-5), kind
        backend.images[key][0] = b
        assert np.array_equal(backend.head(), first), kind   # b is not encoded yet
        backend.encode(key)
        second = backend.head()
        assert agrees(second, act_of(policy, low, {key: b}), 1e-5, 1e-5), kind
        assert not agrees(first, second), kind
        whole = make_backend(policy, kind, split=False)
        assert not whole.split and not whole.features
        whole.low[...] = backend.low
        whole.images[key][0] = b
        assert agrees(whole.run(), second, 1e-5, 1e-5), kind
    with pytest.raises(BackendError, match="numpy"):
        make_backend(policy, "numpy")


class ReadsPixels(MlpPolicy):
    """A family that reads its images outside its encoders: its head cannot run on features."""

    def features(self, obs):
        out = super().features(obs)
        return out + obs[self.cfg.image_keys[0]].float().mean() / 255.0


def test_a_policy_that_reads_pixels_outside_its_encoders_runs_whole():
    policy = image_policy("mlp")
    odd = ReadsPixels(policy.cfg)
    odd.load_state_dict(policy.state_dict())
    odd.eval()
    assert split_policy(odd) is not None   # it looks splittable; the check finds it is not
    backend, rows = select_backend(odd, "auto", calls=5)
    assert not backend.split
    key = SPEC.image_observations[0].key
    fill_example(backend, odd, 3)
    assert agrees(backend.run(), act_of(odd, backend.low[0].copy(),
                                         {key: backend.images[key][0].copy()}), 1e-5, 1e-5)
    assert {r["backend"] for r in rows if "median_us" in r} == set(KINDS) - {"numpy"}


def loaded(policy, kind="eager", split=True) -> LoadedPolicy:
    return LoadedPolicy("mem", SPEC, {}, make_backend(policy, kind, split=split), [], "v", 0.0)


def observations(ticks: int, every: int, seed: int = 2) -> list:
    """One observation per tick: low-dimensional values change every tick, the camera frame
    every ``every`` ticks (a camera slower than the control loop)."""
    rng = np.random.default_rng(seed)
    pictures = frames(ticks // every + 1, seed)
    key = SPEC.image_observations[0].key
    out = []
    for t in range(ticks):
        o = {f.key: rng.normal(0, 0.3, f.shape) for f in SPEC.observations if not f.is_image}
        # a copy per tick, as the node's assembler hands out: equal frames, other arrays
        o[key] = pictures[t // every].copy()
        out.append(o)
    return out


@pytest.mark.parametrize("family, settings", [
    ("mlp", {}), ("act", {}), ("diffusion", {}),
    ("act", {"chunk_mode": "chunk", "chunk_execute": 2, "prefetch": 1}),
    ("mlp", {"chunk_mode": "ensemble"})])
def test_inline_encodes_each_frame_once_and_commands_as_the_whole_policy(family, settings):
    """Ticks at six times the camera's rate: one encoding per frame, and every command the
    same as the policy's run whole (its camera encoded at every inference) gives."""
    policy = image_policy(family)
    obs = observations(36, 6)
    runs = {}
    for split in (True, False):
        ctl, _ = make_controller(loaded(policy, split=split), SPEC, allow_unlimited=True,
                                 **settings)
        runs[split] = [ctl.tick(o).action for o in obs]
        counters = ctl.counters
        ctl.close()
        if split:
            assert counters.frames_encoded == 6, counters
            assert ctl.encode_timing()["p50_ms"] > 0
        else:
            assert counters.frames_encoded == 0   # whole: encoded inside every inference
    for t, (a, b) in enumerate(zip(runs[True], runs[False])):
        assert agrees(a, b, 1e-5, 1e-5), (t, np.abs(a - b).max())


def test_a_new_episode_encodes_its_frame_again_and_nothing_stale_survives_a_swap():
    policy, other = image_policy("mlp"), image_policy("mlp", seed=5)
    obs = observations(4, 10)
    ctl, _ = make_controller(loaded(policy), SPEC, allow_unlimited=True)
    ctl.tick(obs[0])
    ctl.reset()
    ctl.tick(obs[1])     # the same frame: encoded again after the reset
    assert ctl.counters.frames_encoded == 2
    ctl.offer(loaded(other))
    got = ctl.tick(obs[2]).action  # the new policy's own encoder ran on the frame
    ctl.close()
    assert ctl.counters.frames_encoded == 3
    fresh, _ = make_controller(loaded(other), SPEC, allow_unlimited=True)
    fresh.tick(obs[1])
    expected = fresh.tick(obs[2]).action
    fresh.close()
    assert agrees(got, expected, 1e-5, 1e-5)


def slowed(**settings):
    """A controller encoding ahead whose encoder thread holds each frame until ``release`` is
    set (frames encoded on the tick are not held); the expected command of an observation
    with a given frame."""
    policy = image_policy("mlp")
    key = SPEC.image_observations[0].key
    backend = make_backend(policy, "eager")
    encode_frame = backend.encode_frame
    release = threading.Event()
    entered = []

    def slow(k, image):
        entered.append(image.copy())
        if threading.current_thread().name.startswith("camera-encoder"):
            release.wait(5.0)
        return encode_frame(k, image)

    backend.encode_frame = slow
    ctl, _ = make_controller(LoadedPolicy("mem", SPEC, {}, backend, [], "v", 0.0), SPEC,
                             allow_unlimited=True, camera_encoding="ahead", **settings)

    def expected(o, frame):
        return act_of(policy, np.concatenate([o[k] for k in policy.cfg.low_dim_keys]),
                      {key: frame})[0]   # the first action of the chunk (chunk_mode first)

    return ctl, key, release, entered, expected


def test_ahead_no_tick_waits_for_the_encoder_and_each_uses_the_newest_ready_frame():
    """An encoder held back: the ticks go on at once with the previous frame's features
    (counted), each command equal to the whole policy's on the current low-dimensional values
    and the newest frame encoded before it; the first tick of an episode encodes its frame."""
    ctl, key, release, entered, expected = slowed()
    obs = observations(6, 3)
    r = ctl.tick(obs[0])   # the first frame: on the tick
    assert agrees(r.action, expected(obs[0], obs[0][key]), 1e-5, 1e-5)
    for o in obs[1:3]:
        assert agrees(ctl.tick(o).action, expected(o, obs[0][key]), 1e-5, 1e-5)
    t = time.perf_counter()
    for o in obs[3:5]:    # a new frame: being encoded (held back), the old one's features used
        assert agrees(ctl.tick(o).action, expected(o, obs[0][key]), 1e-5, 1e-5)
    assert time.perf_counter() - t < 1.0
    assert ctl.counters.previous_frame_ticks == 2
    release.set()
    assert ctl.wait_inflight(5.0) and ctl.wait_frames(5.0)
    got = ctl.tick(obs[5]).action
    assert agrees(got, expected(obs[5], obs[3][key]), 1e-5, 1e-5)
    assert ctl.counters.frames_encoded == 2 and len(entered) == 2
    ctl.reset()           # a new episode encodes its own frame
    assert agrees(ctl.tick(obs[0]).action, expected(obs[0], obs[0][key]), 1e-5, 1e-5)
    ctl.close()


def test_ahead_a_frame_in_encoding_past_max_frame_lag_hands_the_frames_to_the_ticks():
    """On a busy machine the encoder's thread (at low priority) may starve: once a frame has
    been in encoding for longer than ``max_frame_lag``, each tick encodes the newest frame
    itself (counted) until that thread is done, without waiting for it, so that the features
    commands come from are never older than the bound plus one encoding; then frames go to the
    encoder's thread again. Within the bound, ticks go on with the previous frame's."""
    ctl, key, release, entered, expected = slowed(max_frame_lag=0.2)
    obs = observations(12, 3)
    ctl.tick(obs[0])                   # the first frame: on the tick
    t = time.perf_counter()
    assert agrees(ctl.tick(obs[3]).action, expected(obs[3], obs[0][key]), 1e-5, 1e-5)
    assert time.perf_counter() - t < 0.15 and ctl.counters.previous_frame_ticks == 1
    time.sleep(0.25)                   # that frame is now 0.25 s in encoding
    t = time.perf_counter()
    assert agrees(ctl.tick(obs[4]).action, expected(obs[4], obs[3][key]), 1e-5, 1e-5)
    assert time.perf_counter() - t < 2.0 and not release.is_set()
    assert ctl.counters.late_frames == 1
    # a new frame while the encoder's thread is still held: on the tick too
    assert agrees(ctl.tick(obs[6]).action, expected(obs[6], obs[6][key]), 1e-5, 1e-5)
    assert ctl.counters.late_frames == 2 and ctl.counters.previous_frame_ticks == 1
    release.set()
    assert ctl.wait_frames(5.0)
    assert agrees(ctl.tick(obs[7]).action, expected(obs[7], obs[6][key]), 1e-5, 1e-5)
    # the encoder's thread caught up: the next frame is its again
    assert agrees(ctl.tick(obs[9]).action, expected(obs[9], obs[6][key]), 1e-5, 1e-5)
    assert ctl.counters.previous_frame_ticks == 2
    assert ctl.wait_frames(5.0)
    assert agrees(ctl.tick(obs[10]).action, expected(obs[10], obs[9][key]), 1e-5, 1e-5)
    assert ctl.counters.late_frames == 2 and ctl.counters.frames_encoded == 4
    assert [f[0, 0, 0, 0] for f in entered] == [obs[k][key][0, 0, 0] for k in (0, 3, 4, 6, 9)]
    ctl.close()
    with pytest.raises(ValueError, match="max_frame_lag must be >= 0, not -1"):
        make_controller(loaded(image_policy("mlp")), SPEC, allow_unlimited=True,
                        max_frame_lag=-1)


def scheduling(tid: int) -> tuple[int, int]:
    return os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
@pytest.mark.parametrize("priority, expected", [
    ("idle", (getattr(os, "SCHED_IDLE", 5), None)), ("low", (os.SCHED_OTHER, 19)),
    ("normal", (os.SCHED_OTHER, None))])
def test_the_encoder_thread_alone_runs_at_the_priority_asked(priority, expected):
    """The encoder's thread runs below the control loop (``idle``: any thread of the machine
    that wakes preempts it at once; ``low``: nice 19), and nothing else is lowered: neither
    the thread that ticks nor a thread it starts afterwards (they inherit its scheduling)."""
    mine = scheduling(threading.get_native_id())
    ctl, _ = make_controller(loaded(image_policy("mlp")), SPEC, allow_unlimited=True,
                             camera_encoding="ahead", encoder_priority=priority)
    for o in observations(4, 2):
        ctl.tick(o)
    assert ctl.wait_frames(5.0)   # the thread set itself up before its frame
    want_policy, want_nice = expected
    assert scheduling(ctl.encoder_thread_id) == (want_policy, want_nice or mine[1])
    assert ctl.encoder_priority == priority
    assert scheduling(threading.get_native_id()) == mine
    later = []
    t = threading.Thread(target=lambda: later.append(scheduling(threading.get_native_id())))
    t.start()
    t.join()
    assert later == [mine]
    ctl.close()
    with pytest.raises(ValueError, match="encoder_priority must be one of .* not 'high'"):
        make_controller(loaded(image_policy("mlp")), SPEC, allow_unlimited=True,
                        encoder_priority="high")


def test_with_cameras_latest_a_state_is_answered_with_the_newest_frame():
    """``cameras="latest"``: joint states at six times the camera's rate are each answered once,
    with the newest frame, whatever its stamp; the default waits for the frame of the state's
    stamp (a state whose frame never comes is never answered)."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState

    from robot_imitation.observation import ObservationAssembler

    joints = SPEC.observations[0].joints
    latest, stamped = (ObservationAssembler(SPEC, cameras=c) for c in ("latest", "stamp"))
    with pytest.raises(ValueError, match="cameras must be one of .* not 'newest'"):
        ObservationAssembler(SPEC, cameras="newest")
    answered = []
    for k in range(12):
        msgs = []
        if k % 6 == 0:
            msgs.append(("/front/image_raw", Image(height=96, width=96, encoding="rgb8", step=288,
                                                   data=bytes([k]) * (96 * 96 * 3))))
        pose = PoseStamped()
        pose.pose.orientation.w = 1.0
        msgs += [("/ee_pose", pose), ("/joint_states", JointState(
            name=joints, position=[float(k)] * 9, velocity=[0.0] * 9, effort=[0.0] * 9))]
        for topic, msg in msgs:
            msg.header.stamp.sec, msg.header.stamp.nanosec = 10, k * 1_000_000
            latest.on_message(topic, msg)
            stamped.on_message(topic, msg)
        got = latest.synchronized()
        assert got is not None and latest.synchronized() is None   # once
        assert got[1]["joint_pos"][0] == k
        answered.append(int(got[1]["front_image"][0, 0, 0]))
        assert (stamped.synchronized() is not None) == (k % 6 == 0)
    assert answered == [0] * 6 + [6] * 6


def test_the_encoder_in_bf16_gives_the_float32_keypoints_and_float32_gradients():
    """``ImageEncoder.forward_in``: what the encoder runs under the trainer's bf16 autocast on a
    GPU (every layer in bf16, group norms included). Here on the CPU: the keypoints agree with
    the float32 encoder to bf16's precision, come out float32, and the float32 weights get
    float32 gradients through the casts."""
    from robot_imitation.policies.encoders import ImageEncoder

    torch.manual_seed(0)
    enc = ImageEncoder(3, [32, 32, 64], 32)
    frames = torch.randint(0, 256, (6, 48, 48, 3), dtype=torch.uint8)
    full = enc(frames)
    low = enc.forward_in(frames, torch.bfloat16)
    assert low.dtype == torch.float32 and low.shape == full.shape == (6, 64)
    assert torch.isfinite(low).all()
    err = (low - full).abs().max().item()
    assert err < 0.05, err  # coordinates in [-1, 1]
    # not the float32 path by accident: bf16 rounds somewhere
    assert err > 0
    low.square().sum().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)



@pytest.mark.parametrize("height,width", [(96, 96), (48, 50), (37, 45)])
def test_the_encoders_first_convolution_as_one_matrix_product_is_the_same_convolution(
        monkeypatch, height, width):
    """``conv_by_columns`` (what ``forward_in`` runs for the first convolution when the loss is
    compiled): in float64 the direct convolution's outputs, with and without a bias; through
    ``forward_in`` under compiling, in float32, the encoder's keypoints and weight gradients."""
    from torch import nn
    from torch.nn import functional as F

    from robot_imitation.policies import encoders
    from robot_imitation.policies.encoders import ImageEncoder, columns_fit, conv_by_columns

    torch.manual_seed(height)
    for conv in (nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.Conv2d(5, 8, 3, 1, 1, bias=False)):
        conv = conv.double()
        assert columns_fit(conv)
        frames = torch.rand(3, conv.in_channels, height, width, dtype=torch.float64)
        direct = conv(frames)
        rows = conv_by_columns(frames, conv, torch.float64)
        assert rows.shape == direct.shape
        assert (rows - direct).abs().max().item() < 1e-12
    assert not columns_fit(nn.Conv2d(3, 8, 3, dilation=2))
    assert not columns_fit(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"))

    enc = ImageEncoder(3, [32, 32, 64], 32)
    images = torch.randint(0, 256, (4, height, width, 3), dtype=torch.uint8)
    unfolded = []
    real_unfold = F.unfold
    monkeypatch.setattr(F, "unfold", lambda *a, **k: unfolded.append(1) or real_unfold(*a, **k))
    outs, grads = [], []
    for compiling in (False, True):
        monkeypatch.setattr(encoders.torch.compiler, "is_compiling", lambda c=compiling: c)
        enc.zero_grad()
        out = enc.forward_in(images, torch.float32)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in enc.parameters()])
        assert len(unfolded) == compiling
    assert (outs[0] - outs[1]).abs().max().item() < 1e-5
    for direct_grad, rows_grad in zip(*grads):
        scale = direct_grad.abs().max().item()
        assert (direct_grad - rows_grad).abs().max().item() <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("kind", ["eager", "torchscript", "onnxruntime"])
def test_an_encoder_in_stages_gives_the_encoders_features(kind):
    """The default encoder (32, 32, 64 channels on 96 x 96 frames) cut into stages of at most
    ``STAGE_MACS`` multiply-adds, its heavier convolutions by output channels in whole
    group-norm groups: run a stage at a time on each backend, the features are the encoder's;
    a new ``start`` drops the frame in progress."""
    torch.manual_seed(0)
    policy = make_policy(SPEC, TrainConfig()).eval()
    key = SPEC.image_observations[0].key
    encoder = policy.encoders[key]
    stages = encoder_stages(encoder, STAGE_MACS, 96, 96)
    assert [(s.source, s.first, s.last) for s in stages] == [
        (0, 0, 32), (1, 0, 16), (1, 16, 32), (2, 0, 16), (2, 16, 32), (2, 32, 48), (2, 48, 64),
        (3, 0, 32)]
    for s in stages[1:-1]:   # 48 x 48 maps, 3 x 3 kernels
        assert 48 * 48 * (s.last - s.first) * s.weight.shape[1] * 9 <= STAGE_MACS
    backend = make_backend(policy, kind)
    staged = backend.staged(key)
    assert staged is backend.staged(key) and staged.stages == 8   # made once
    a, b = frames(2)
    staged.start(a)
    staged.step()
    assert not staged.done() and staged.next_cost() > 0
    assert staged.remaining_cost() > staged.next_cost()
    staged.start(b)
    steps = 0
    while not staged.done():
        staged.step()
        steps += 1
    features, seconds = staged.result()
    assert steps == 8 and seconds > 0 and staged.remaining_cost() == 0
    np.testing.assert_allclose(features, backend.encode_frame(key, b[None]), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(features, backend.encode_frame(key, a[None]), atol=1e-3)
    # an encoder of another form (no group norms) runs whole: no stages
    assert encoder_stages(nn_of_other_form(), STAGE_MACS, 96, 96) is None


def nn_of_other_form() -> ImageEncoder:
    odd = ImageEncoder(3, [8], 4)
    odd.net[1] = torch.nn.Identity()
    return odd


def between_controller(**settings):
    policy = image_policy("mlp")
    ctl, _ = make_controller(loaded(policy, "onnxruntime"), SPEC, allow_unlimited=True,
                             camera_encoding="between", **settings)
    key = SPEC.image_observations[0].key

    def expected(o, frame):
        return act_of(policy, np.concatenate([o[k] for k in policy.cfg.low_dim_keys]),
                      {key: frame})[0]
    return ctl, key, expected


def test_between_encodes_each_frame_in_stages_in_the_time_given_after_the_ticks():
    """The first frame of an episode is encoded on its tick. A new frame: the ticks use the
    previous frame's features (counted) while ``between(deadline)`` runs its stages, only those
    that fit before the deadline (none with no time left; a frame taken on that tick only if
    it fits whole); once all have run, the next tick commands from the new frame."""
    ctl, key, expected = between_controller()
    obs = observations(10, 2)   # frames at ticks 0, 2, 4, 6 and 8
    assert agrees(ctl.tick(obs[0]).action, expected(obs[0], obs[0][key]), 1e-5, 1e-5)
    assert ctl.counters.frames_encoded == 1
    ctl.between(time.perf_counter() + 1.0)     # nothing in encoding
    assert agrees(ctl.tick(obs[2]).action, expected(obs[2], obs[0][key]), 1e-5, 1e-5)
    staged = ctl.backend.staged(key)
    assert staged.stages == 3 and not staged.done()
    whole = staged.remaining_cost()
    ctl.between(time.perf_counter() + whole * 0.5)
    assert staged.remaining_cost() == whole    # taken on this tick, not whole: from the next
    assert agrees(ctl.tick(obs[3]).action, expected(obs[3], obs[0][key]), 1e-5, 1e-5)
    ctl.between(time.perf_counter())           # no time: no stage
    assert staged.remaining_cost() == whole
    # a new frame at tick 4 while frame 2 is in encoding: frame 0's features still
    assert agrees(ctl.tick(obs[4]).action, expected(obs[4], obs[0][key]), 1e-5, 1e-5)
    ctl.between(time.perf_counter() + staged.next_cost() + 0.05)
    assert staged.remaining_cost() < whole     # what fits (at least the next stage)
    ctl.between(time.perf_counter() + 1.0)
    assert staged.done()
    # frame 2's features; frame 4, taken now, fits whole in the second given: encoded at once
    assert agrees(ctl.tick(obs[5]).action, expected(obs[5], obs[2][key]), 1e-5, 1e-5)
    ctl.between(time.perf_counter() + 1.0)
    assert agrees(ctl.tick(obs[6]).action, expected(obs[6], obs[4][key]), 1e-5, 1e-5)
    c = ctl.counters
    assert c.frames_encoded == 3 and c.previous_frame_ticks == 5 and c.late_frames == 0
    ctl.reset()     # a new episode encodes its own frame on its tick
    assert agrees(ctl.tick(obs[7]).action, expected(obs[7], obs[6][key]), 1e-5, 1e-5)
    assert ctl.counters.frames_encoded == 4
    ctl.close()


def test_between_runs_no_stage_before_start_and_waits_only_for_one_that_fits():
    """``between(deadline, start)``: the first stage not before ``start`` (the tick's command is
    on its way meanwhile: stages right after it held up its delivery); no wait when no stage
    is to run. A stage that does not fit after ``start`` runs at once if it fits from now: it
    was skipped, so that a stage longer than the time from start to the deadline never ran and
    its frame waited for ``max_frame_lag``, then was finished on a tick. The stage after a wait
    for ``start`` runs if it fit from there: the sleep's late wake-up made one that just fit
    (a stage of 0.43 ms, 0.5 ms from start to the deadline at 500 Hz) never run."""
    ctl, key, expected = between_controller()
    obs = observations(10, 2)
    ctl.tick(obs[0])
    t = time.perf_counter()
    ctl.between(t + 10.0, start=t + 5.0)       # nothing in encoding: no wait
    assert time.perf_counter() - t < 2.5
    ctl.tick(obs[2])
    ctl.tick(obs[3])                           # frame 2 in encoding, taken a tick before
    staged = ctl.backend.staged(key)
    began = []
    step = staged.step

    def timed():
        began.append(time.perf_counter())
        step()
    staged.step = timed
    t = time.perf_counter()
    ctl.between(t + staged.next_cost() * 0.5, start=t + 5.0)   # fits neither after start nor now
    assert began == [] and time.perf_counter() - t < 2.5
    t = time.perf_counter()
    ctl.between(t + 5.0 + staged.next_cost() * 0.5, start=t + 5.0)   # not after start: at once
    assert staged.done() and began[0] < t + 2.5 and time.perf_counter() - t < 2.5
    assert agrees(ctl.tick(obs[4]).action, expected(obs[4], obs[2][key]), 1e-5, 1e-5)
    ctl.tick(obs[5])                           # frame 4 in encoding, taken a tick before
    assert ctl.backend.staged(key) is staged and not staged.done()   # (its step still timed)
    began.clear()
    t = time.perf_counter()
    ctl.between(t + 1.0, start=t + 0.05)
    assert staged.done() and began[0] >= t + 0.05
    assert agrees(ctl.tick(obs[6]).action, expected(obs[6], obs[4][key]), 1e-5, 1e-5)
    ctl.tick(obs[7])                           # frame 6 in encoding
    began.clear()
    staged._costs[:] = 0.02      # (estimates each stage of 20 ms: the first one fits just so)
    t = time.perf_counter()
    ctl.between(t + 0.05 + 0.02, start=t + 0.05)    # a sleep to start wakes late: it still runs
    assert len(began) == 1 and began[0] >= t + 0.05 and not staged.done()
    ctl.close()


def test_between_a_frame_starved_past_max_frame_lag_is_finished_on_the_tick():
    """No time between the ticks (a loop with no idle time): once a frame has been in encoding
    for longer than ``max_frame_lag``, the tick runs its stages (counted) and commands from it;
    a stage that raises gives the safe command, reported."""
    ctl, key, expected = between_controller(max_frame_lag=0.05)
    obs = observations(9, 3)
    ctl.tick(obs[0])
    assert agrees(ctl.tick(obs[3]).action, expected(obs[3], obs[0][key]), 1e-5, 1e-5)
    ctl.between(time.perf_counter())
    time.sleep(0.06)
    assert agrees(ctl.tick(obs[4]).action, expected(obs[4], obs[3][key]), 1e-5, 1e-5)
    assert ctl.counters.late_frames == 1 and ctl.counters.frames_encoded == 2
    staged = ctl.backend.staged(key)

    def broken():
        raise RuntimeError("stage failed")
    staged._runs[1] = broken
    ctl.tick(obs[6])
    ctl.between(time.perf_counter() + 1.0)
    r = ctl.tick(obs[7])
    assert r.reason == "inference_error" and "stage failed" in r.error
    assert ctl.counters.inference_errors == 1
    ctl.close()
    with pytest.raises(ValueError, match="camera_encoding must be one of"):
        make_controller(loaded(image_policy("mlp")), SPEC, allow_unlimited=True,
                        camera_encoding="later")
