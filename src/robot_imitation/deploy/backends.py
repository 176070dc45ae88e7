"""Inference backends for one observation at a time (the control path).

Every backend computes exactly ``Policy.act`` for a batch of one: raw observations in, a raw
action chunk (chunk, action_dim) out, normalization and relative actions included. They differ
in what runs the arithmetic, and in the policies they can run (``Backend.unsupported``: the
reason a backend declines a policy, or None):

- ``eager``: the PyTorch module under ``inference_mode``: any policy of any family.
- ``torchscript``: the same module traced, frozen and optimized for inference: policies whose
  ``act`` can be traced (``Policy.traceable``: the built-in families all are; diffusion's
  sampler is unrolled into one graph).
- ``onnxruntime``: the same module exported to ONNX (in memory; a reload's in a child process,
  ``export``), run by ONNX Runtime: the same.
- ``numpy``: the MLP's weights as NumPy arrays: low-dimensional ``mlp`` policies, but the
  categorical head.

The two compiled ones take a policy's ``inference_module`` where it has one (the mlp, or the
head of a split mlp: its normalization and action scaling folded into its linear layers,
``policies.mlp.folded``) instead of ``act`` itself; eager PyTorch always runs ``act``, the
reference every backend is checked against.

Inputs go into preallocated buffers (``low``: float32 (1, L); ``images[key]``: uint8
(1, H, W, C)) that the caller fills in place; ``run()`` returns the chunk as float64.

A policy with cameras runs split where its family allows it (``split_policy``: the family keeps
its camera encoders as ``encoders`` and reads its images only through them, as the built-in ones
do): ``encode(key)`` runs one camera's encoder on ``images[key]`` into ``features[key]``
(float32 (1, F)), and ``head()`` computes the chunk from ``low`` and the features, so that a
caller encodes each camera frame once however many ticks use it (cameras at 30 Hz, control at
500 Hz). ``run()`` is ``encode`` of every camera, then ``head()``. ``select_backend`` checks every
backend, split or not, against the whole policy's ``act`` (``ActModule``) run by PyTorch.
``select_backend`` measures the candidates that support the loaded model and keeps the fastest
one whose output equals the eager module's; a backend asked for by name that does not support
it is a ``BackendError`` naming the backend and the policy type.
"""
from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
from torch import nn

from ..policies.base import Policy
from ..policies.encoders import encoder_stages

KINDS = ("numpy", "onnxruntime", "torchscript", "eager")


class BackendError(RuntimeError):
    """A backend that cannot run this model (or is not installed)."""


def low_dim_slices(cfg) -> list:
    """[(key, start, end)] of each low-dimensional observation in the flat input vector."""
    out, start = [], 0
    for key, size in zip(cfg.low_dim_keys, cfg.low_dim_sizes):
        out.append((key, start, start + int(size)))
        start += int(size)
    return out


class ActModule(nn.Module):
    """``Policy.act`` for a batch of one with flat inputs: (low, *images) -> (chunk, A)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy
        self.slices = low_dim_slices(policy.cfg)

    def forward(self, low: torch.Tensor, *images: torch.Tensor) -> torch.Tensor:
        obs = {key: low[:, a:b] for key, a, b in self.slices}
        for key, img in zip(self.policy.cfg.image_keys, images):
            obs[key] = img
        return self.policy.act(obs)[0]


class FeaturesIn(nn.Module):
    """A camera encoder's place in the head of a split policy: its input is the camera's features,
    computed already."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def split_policy(policy: Policy) -> tuple[dict, Policy] | None:
    """({image key: camera encoder}, head) of a policy with cameras whose family keeps its encoders
    as ``encoders`` (an ``nn.ModuleDict`` by image key, as ``encoders.camera_encoders`` builds it):
    the head is the policy (sharing its weights) with each encoder replaced by ``FeaturesIn``, so
    that its ``act`` takes each camera's features where the policy takes its images. None for a
    policy without cameras or encoders by image key, or one that keeps state between calls (not
    ``traceable``: its state is the policy's own): it runs whole. A family that reads its images
    other than through these encoders gives a head that disagrees with the policy: the backends'
    check against the whole policy (``select_backend``) refuses it."""
    keys = list(policy.cfg.image_keys)
    encoders = getattr(policy, "encoders", None)
    if (not keys or not policy.traceable or not isinstance(encoders, nn.ModuleDict)
            or sorted(encoders) != sorted(keys)):
        return None
    head = copy.copy(policy)
    head._modules = dict(policy._modules)  # its own table of submodules; the same weights
    head._modules["encoders"] = nn.ModuleDict({key: FeaturesIn() for key in keys})
    return {key: encoders[key] for key in keys}, head


# the multiply-adds of one stage of a camera encoder run in stages (``Backend.staged``): about a
# quarter of a millisecond on one core for the default encoder (10.6 M a stage)
STAGE_MACS = 12e6
COST_WINDOW = 7   # the times of each stage its expected time is the median of


class StagedEncoder:
    """A camera's encoder run one stage at a time (``encoder_stages``), so that the control
    thread can spread a frame's encoding over its idle time between ticks. ``start(frame)``
    takes a frame, ``step()`` runs the next stage, ``done()`` says whether the features are
    computed, ``result()`` gives them as (features (1, F), seconds spent in the stages);
    ``next_cost()`` is what the next stage is expected to take (``remaining_cost()``: all those
    left), the median of its newest ``COST_WINDOW`` times (one slow run, a preemption, does not
    move it). A new ``start`` drops the frame in progress.

    Each stage reads and writes buffers made once (the activations, each stage's channels a
    contiguous part of them): no array is made per stage."""

    def __init__(self, stages: list, image_shape: tuple, runner):
        self.image = np.zeros((1, *image_shape), dtype=np.uint8)
        buffers = [self.image]
        with torch.no_grad():
            tensors = [torch.from_numpy(self.image)]
            for i, stage in enumerate(stages):
                out = stage.eval()(tensors[stage.source])
                if stage.source + 1 == len(tensors):
                    channels = max(s.last for s in stages if s.source == stage.source)
                    shape = (1, channels, *out.shape[2:]) if i < len(stages) - 1 else out.shape
                    buffers.append(np.zeros(shape, dtype=np.float32))
                    tensors.append(torch.from_numpy(buffers[-1]))
                target = tensors[stage.source + 1]
                (target if i == len(stages) - 1 else target[:, stage.first:stage.last]).copy_(out)
        self.features = buffers[-1]
        self._runs = []
        for i, stage in enumerate(stages):
            target = buffers[stage.source + 1]
            target = target if i == len(stages) - 1 else target[:, stage.first:stage.last]
            self._runs.append(runner(stage, buffers[stage.source], target))
        self.stages = len(self._runs)
        self._times = np.zeros((self.stages, COST_WINDOW))  # each stage's newest times
        self._costs = np.zeros(self.stages)
        self._next, self.spent, self._runs_done, self.error = self.stages, 0.0, 0, None
        for _ in range(COST_WINDOW + 2):   # warm, and the first estimates of each stage's time
            self.start(self.image[0])
            self.finish()

    def start(self, frame: np.ndarray) -> "StagedEncoder":
        self.image[0] = frame
        self._next, self.spent, self.error = 0, 0.0, None
        return self

    def step(self) -> None:
        """The next stage. One that raises ends the frame: ``result()`` raises its error."""
        i = self._next
        t = time.perf_counter()
        try:
            self._runs[i]()
        except Exception as exc:  # noqa: BLE001 - given to whoever takes the result
            self.error, self._next = exc, self.stages
            return
        seconds = time.perf_counter() - t
        times = self._times[i]
        times[self._runs_done % COST_WINDOW] = seconds
        self._costs[i] = np.median(times)
        self.spent += seconds
        self._next = i + 1
        self._runs_done += i + 1 == self.stages

    def finish(self) -> None:
        while self._next < self.stages:
            self.step()

    def done(self) -> bool:
        return self._next >= self.stages

    def next_cost(self) -> float:
        return float(self._costs[self._next]) if self._next < self.stages else 0.0

    def remaining_cost(self) -> float:
        return float(self._costs[self._next:].sum())

    def result(self) -> tuple[np.ndarray, float]:
        if self.error is not None:
            raise self.error
        return self.features.copy(), self.spent


class Backend:
    kind = "base"
    note = ""   # how it was built, where that is worth a word in a log ("exported in ...")
    # the policy types this backend runs (None: any type; ``unsupported`` may still decline)
    policy_types: frozenset | None = None

    @classmethod
    def unsupported(cls, policy: Policy) -> str | None:
        """Why this backend cannot run ``policy`` (one line naming the backend and the policy
        type), or None when it can."""
        if cls.policy_types is not None and policy.type_name not in cls.policy_types:
            return (f"the {cls.kind} backend does not run policy type {policy.type_name!r} (it "
                    f"runs: {', '.join(sorted(cls.policy_types))})")
        return None

    @classmethod
    def supports(cls, policy: Policy) -> bool:
        return cls.unsupported(policy) is None

    def __init__(self, policy: Policy, split: bool = True):
        problem = self.unsupported(policy)
        if problem:
            raise BackendError(problem)
        cfg = policy.cfg
        self.cfg = cfg
        self.policy_type = policy.type_name
        self.low = np.zeros((1, cfg.low_dim), dtype=np.float32)
        self.images = {k: np.zeros((1, *shape), dtype=np.uint8)
                       for k, shape in zip(cfg.image_keys, cfg.image_shapes)}
        self.parts = split_policy(policy) if split else None
        self._staged: dict = {}   # image key: StagedEncoder or None (``staged``)
        # each camera's features (split backends): what encode() writes and head() reads
        self.features: dict = {}
        if self.parts is not None:
            with torch.no_grad():
                for key, encoder in self.parts[0].items():
                    dim = encoder.eval()(torch.from_numpy(self.images[key])).shape[-1]
                    self.features[key] = np.zeros((1, dim), dtype=np.float32)

    @property
    def split(self) -> bool:
        """Whether the cameras are encoded apart (``encode``) from the head."""
        return bool(self.features)

    def encode(self, key: str) -> None:
        """``images[key]`` -> ``features[key]`` (nothing where the policy runs whole)."""
        if self.split:
            self.features[key][...] = self.encode_frame(key, self.images[key])

    def encode_frame(self, key: str, image: np.ndarray) -> np.ndarray:
        """Camera ``key``'s features (1, F) of ``image`` (uint8 (1, H, W, C)), in a new array;
        the backend's buffers untouched (a thread other than the head's may call it)."""
        raise NotImplementedError

    def head(self) -> np.ndarray:
        """The chunk from ``low`` and the cameras' features (or, whole, their images)."""
        raise NotImplementedError

    def run(self) -> np.ndarray:
        """The chunk of the inputs in the buffers: every camera encoded, then the head."""
        for key in self.features:
            self.encode(key)
        return self.head()

    def inputs(self) -> list:
        """The head's inputs as tensors sharing the buffers' memory: low, then each camera's
        features (split) or image (whole), in the spec's order."""
        per_camera = self.features if self.split else self.images
        return [torch.from_numpy(self.low)] + [torch.from_numpy(per_camera[k])
                                               for k in self.cfg.image_keys]

    def head_module(self, policy: Policy) -> "ActModule":
        """``act`` (of the head, split) on flat inputs: what eager PyTorch runs."""
        return ActModule((self.parts[1] if self.split else policy).cpu().eval()).eval()

    def export_module(self, policy: Policy) -> nn.Module:
        """What a compiled backend (TorchScript, ONNX) runs for the head: the policy's own
        ``inference_module`` where it has one (asked of policies without cameras, or split),
        else ``head_module``."""
        if self.split or not self.cfg.image_keys:
            module = policy.cpu().eval().inference_module()
            if module is not None:
                return module.eval()
        return self.head_module(policy)

    def staged(self, key: str) -> StagedEncoder | None:
        """Camera ``key``'s encoder as a ``StagedEncoder`` (made on the first call, then kept:
        a caller makes it off the control path), or None where the policy runs whole or its
        encoder has another form than the suite's."""
        made = self._staged
        if key not in made:
            encoder = self.parts[0][key] if self.split else None
            h, w = self.images[key].shape[1:3]
            stages = None if encoder is None else encoder_stages(encoder, STAGE_MACS, h, w)
            made[key] = None if stages is None else StagedEncoder(
                stages, self.images[key].shape[1:], self.stage_runner)
        return made[key]

    def stage_runner(self, stage: nn.Module, source: np.ndarray, target: np.ndarray):
        """A call that runs ``stage`` on ``source`` into ``target`` (eager PyTorch)."""
        inputs, out = torch.from_numpy(source), torch.from_numpy(target)
        stage = stage.eval()

        def run() -> None:
            with torch.no_grad():
                out.copy_(stage(inputs))
        return run

    def reset(self) -> None:
        """A new episode: a policy that keeps state between calls forgets it."""


class EagerBackend(Backend):
    kind = "eager"

    def __init__(self, policy: Policy, split: bool = True):
        super().__init__(policy.cpu().eval(), split)
        self.module = self.head_module(policy)
        # Tensors sharing memory with the numpy buffers: filling a buffer fills the input.
        self._inputs = self.inputs()
        self.encoders = {} if not self.split else {
            key: encoder.eval() for key, encoder in self.parts[0].items()}
        self.policy = policy

    def encode_frame(self, key: str, image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.encoders[key](torch.from_numpy(image))
        return out.numpy().astype(np.float32, copy=False)

    def head(self) -> np.ndarray:
        with torch.inference_mode():
            return self.module(*self._inputs).double().numpy()

    def reset(self) -> None:
        self.policy.reset()


def _untraceable(kind: str, policy: Policy) -> str | None:
    if not policy.traceable:
        return (f"the {kind} backend does not run policy type {policy.type_name!r}: its act() "
                "keeps state or branches on values (not traceable)")
    return None


class TorchScriptBackend(EagerBackend):
    kind = "torchscript"

    @classmethod
    def unsupported(cls, policy: Policy) -> str | None:
        return super().unsupported(policy) or _untraceable(cls.kind, policy)

    def __init__(self, policy: Policy, split: bool = True):
        super().__init__(policy, split)

        def script(module, inputs):
            traced = torch.jit.trace(module, tuple(inputs), check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = script(self.export_module(policy), self._inputs)
            self.encoders = {key: script(encoder, [torch.from_numpy(self.images[key])])
                             for key, encoder in self.encoders.items()}
        self._script = script

    def stage_runner(self, stage: nn.Module, source: np.ndarray, target: np.ndarray):
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stage = self._script(stage.eval(), [torch.from_numpy(source)])
        return super().stage_runner(stage, source, target)


class OnnxBackend(Backend):
    kind = "onnxruntime"

    @classmethod
    def unsupported(cls, policy: Policy) -> str | None:
        return super().unsupported(policy) or _untraceable(cls.kind, policy)

    def __init__(self, policy: Policy, threads: int = 1, split: bool = True,
                 apart: bool = False):
        super().__init__(policy, split)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed") from None
        from .export import ExportError, export_apart, export_onnx

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3

        def session(graph: bytes):
            return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

        # apart: exported in a child process, this one's interpreter lock left free (a reload
        # while a control loop runs: ``export``); here where the child could not do it
        graphs, self.note = None, "exported in this process"
        try:
            if apart:
                try:
                    graphs = export_apart(policy, self.split)
                    self.note = "exported in a child process"
                except RuntimeError as exc:
                    if isinstance(exc, ExportError):
                        raise
                    self.note = f"exported in this process ({exc})"
            if graphs is None:
                graphs = export_onnx(policy, self.split)
        except ExportError as exc:
            raise BackendError(str(exc)) from None
        missing = [key for key in ("chunk", *self.features) if key not in graphs]
        if missing:
            raise BackendError(f"the ONNX export gave no graph for {missing}")
        try:
            self.session = session(graphs["chunk"])
            self.encoders = {key: session(graphs[key]) for key in self.features}
        except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime refuses: not this backend
            raise BackendError(f"ONNX Runtime cannot load the exported graph: "
                               f"{type(exc).__name__}: {exc}") from None
        per_camera = "features" if self.split else "image"
        names = ["low"] + [f"{per_camera}_{i}" for i in range(len(self.cfg.image_keys))]
        per_camera = self.features if self.split else self.images
        self.feed = {"low": self.low}
        for name, key in zip(names[1:], self.cfg.image_keys):
            self.feed[name] = per_camera[key]
        self._ort = ort
        self._opts = opts
        self._binding = None  # made on the first head(): the inputs and output bound once
        self._out = None

    def encode_frame(self, key: str, image: np.ndarray) -> np.ndarray:
        return self.encoders[key].run(None, {"image": image})[0].astype(np.float32, copy=False)

    def stage_runner(self, stage: nn.Module, source: np.ndarray, target: np.ndarray):
        """A session of its own, its input and output bound once to the buffers."""
        from .export import onnx_bytes

        session = self._ort.InferenceSession(
            onnx_bytes(stage.eval(), ["x"], [torch.from_numpy(source)], "y"), self._opts,
            providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        binding.bind_cpu_input("x", source)
        binding.bind_ortvalue_output("y", self._ort.OrtValue.ortvalue_from_numpy(target))
        return lambda: session.run_with_iobinding(binding)

    def head(self) -> np.ndarray:
        # The buffers (``low``, each camera's) are made once and written in place, so they are
        # bound to the session once, and so is an output array of the first chunk's shape:
        # each call then runs without building its inputs and outputs again (the reach MLP's
        # head 21 -> 15 us a call). A session runs one call at a time (the tick's thread, or
        # the chunk worker's, never both at once).
        if self._binding is None:
            first = self.session.run(None, self.feed)[0]
            binding = self.session.io_binding()
            for name, array in self.feed.items():
                binding.bind_cpu_input(name, array)
            self._out = np.empty_like(first)
            binding.bind_ortvalue_output(self.session.get_outputs()[0].name,
                                         self._ort.OrtValue.ortvalue_from_numpy(self._out))
            self._binding = binding
            return first.astype(np.float64)
        self.session.run_with_iobinding(self._binding)
        return self._out.astype(np.float64)


# erf with |error| < 1.5e-7 (Abramowitz and Stegun 7.1.26): float32 accuracy, all in numpy.
_P, _A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _gelu_inplace(x: np.ndarray, tmp: np.ndarray) -> None:
    """x <- x * Phi(x) (exact GELU, as torch.nn.GELU()), with the scratch buffer ``tmp``."""
    z = x * np.float32(0.7071067811865476)
    az = np.abs(z)
    t = 1.0 / (1.0 + _P * az)
    poly = ((((_A[4] * t + _A[3]) * t + _A[2]) * t + _A[1]) * t + _A[0]) * t
    np.multiply(poly, np.exp(-az * az), out=tmp)   # erfc(|z|)
    erf = np.copysign(1.0 - tmp, z)
    x *= 0.5 * (1.0 + erf)


class NumpyBackend(Backend):
    kind = "numpy"
    policy_types = frozenset({"mlp"})

    @classmethod
    def unsupported(cls, policy: Policy) -> str | None:
        problem = super().unsupported(policy)
        if problem is None and policy.cfg.image_keys:
            problem = ("the numpy backend runs low-dimensional MLP policies only (this mlp "
                       "policy has images)")
        if problem is None and policy.cfg.head == "categorical":
            problem = "the numpy backend does not run mlp policies with a categorical head"
        return problem

    def __init__(self, policy: Policy, split: bool = True):
        super().__init__(policy, split)
        cfg = policy.cfg
        linears = [m for m in policy.net if isinstance(m, nn.Linear)]
        others = {type(m).__name__ for m in policy.net if not isinstance(m, nn.Linear)}
        if not others <= {"GELU", "Dropout"} or any(
                isinstance(m, nn.GELU) and m.approximate != "none" for m in policy.net):
            raise BackendError(f"the numpy backend does not know the layers {sorted(others)}")

        def arr(t):
            return t.detach().cpu().float().numpy().copy()

        self.layers = [(arr(m.weight).T.copy(), arr(m.bias)) for m in linears]
        self.hidden = [np.zeros((1, w.shape[1]), np.float32) for w, _ in self.layers]
        self.scratch = [np.zeros_like(h) for h in self.hidden]
        self.obs_shift = arr(policy.obs_norm.shift)
        self.obs_scale = arr(policy.obs_norm.scale)
        self.act_shift = arr(policy.act_norm.shift)
        self.act_scale = arr(policy.act_norm.scale)
        self.x = np.zeros((1, cfg.input_dim), np.float32)
        offsets = {key: start for key, start, _ in low_dim_slices(cfg)}
        # derived features: views of the raw input, computed by the spec's own code into x
        raw = {key: self.low[:, a:b] for key, a, b in low_dim_slices(cfg)}
        self.derived, at = [], cfg.low_dim
        for f in cfg.feature_specs():
            self.derived.append((f, self.x[:, at:at + f.size]))
            raw[f.key] = self.x[:, at:at + f.size]
            at += f.size
        self._raw = raw
        # (action offset, size, low-buffer offset) of relative actions
        self.relative = [(int(o), int(s), offsets[k]) for o, s, k in cfg.relative]

    def head(self) -> np.ndarray:
        cfg = self.cfg
        self.x[:, :cfg.low_dim] = self.low
        for f, out in self.derived:
            out[...] = f.compute(self._raw)
        self.x -= self.obs_shift
        self.x /= self.obs_scale
        h = self.x
        last = len(self.layers) - 1
        for i, ((w, b), out, tmp) in enumerate(zip(self.layers, self.hidden, self.scratch)):
            np.matmul(h, w, out=out)
            out += b
            if i < last:
                _gelu_inplace(out, tmp)
            h = out
        out = h[0]
        a = cfg.action_dim
        if cfg.head == "mse":
            mean = out.reshape(cfg.chunk, a)
        elif cfg.head == "gaussian":
            mean = out.reshape(cfg.chunk, a, 2)[..., 0]
        else:  # gmm: the likeliest mode's mean
            k, d = cfg.modes, cfg.chunk * a
            best = int(np.argmax(out[:k]))
            mean = out[k:].reshape(k, 2, d)[best, 0].reshape(cfg.chunk, a)
        actions = mean.astype(np.float64) * self.act_scale + self.act_shift
        for offset, size, low_at in self.relative:
            actions[:, offset:offset + size] += self.low[0, low_at:low_at + size]
        return actions


BACKENDS = {"numpy": NumpyBackend, "onnxruntime": OnnxBackend,
            "torchscript": TorchScriptBackend, "eager": EagerBackend}


def make_backend(policy: Policy, kind: str, threads: int = 1, split: bool = True,
                 apart: bool = False) -> Backend:
    """Backend ``kind`` of ``policy``; ``split``: its cameras encoded apart from the head where
    the policy can be split (``split_policy``); ``apart``: an ONNX export in a child process
    (``export.export_apart``)."""
    if kind in BACKENDS:
        problem = BACKENDS[kind].unsupported(policy)
        if problem:
            raise BackendError(problem)
    if kind == "eager":
        return EagerBackend(policy, split)
    if kind == "torchscript":
        try:
            return TorchScriptBackend(policy, split)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"TorchScript tracing failed: {type(exc).__name__}: {exc}") from None
    if kind == "onnxruntime":
        return OnnxBackend(policy, threads, split, apart)
    if kind == "numpy":
        return NumpyBackend(policy, split)
    raise BackendError(f"unknown inference backend {kind!r} (one of {KINDS} or auto)")


def fill_example(backend: Backend, policy: Policy, seed: int = 0) -> None:
    """Representative inputs: the training mean plus noise of the training spread."""
    rng = np.random.default_rng(seed)
    shift = policy.obs_norm.shift.detach().cpu().numpy()
    scale = policy.obs_norm.scale.detach().cpu().numpy()
    n = backend.low.shape[1]  # the raw inputs (derived features come after them)
    backend.low[0] = shift[:n] + scale[:n] * rng.standard_normal(n)
    for img in backend.images.values():
        img[...] = rng.integers(0, 256, img.shape, dtype=np.uint8)


def agrees(a: np.ndarray, b: np.ndarray, rtol: float = 1e-4, atol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def time_backend(backend: Backend, calls: int = 200) -> float:
    """Median seconds per ``run()``, after a warm-up."""
    for _ in range(min(20, calls)):
        backend.run()
    times = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        backend.run()
        times[i] = time.perf_counter() - t
    return float(np.median(times))


def select_backend(policy: Policy, kind: str = "auto", threads: int = 1, calls: int = 200,
                   apart: bool = False) -> tuple[Backend, list[dict]]:
    """The backend ``kind``, or with ``auto`` the fastest one that agrees with eager PyTorch.
    ``apart``: the ONNX export in a child process, this process's interpreter lock left to its
    other threads (a reload under a running control loop). With ``auto`` and ``apart``,
    TorchScript is not tried: its trace runs here, holding the lock (243 ms for the default
    diffusion policy: as long without a tick); asked for by name, it is traced.

    Returns (backend, measurements): one row per candidate with its median latency in
    microseconds, or why it was not used.
    """
    if kind != "auto" and kind not in BACKENDS:
        raise BackendError(f"unknown inference backend {kind!r} (one of {KINDS} or auto)")
    if kind != "auto":  # asked for by name: one that cannot run this policy type says so
        problem = BACKENDS[kind].unsupported(policy)
        if problem:
            raise BackendError(problem)
    reference = EagerBackend(policy)
    fill_example(reference, policy)
    expected = reference.run()
    want = (policy.cfg.chunk, policy.cfg.action_dim)
    if expected.shape != want:
        # a family whose act() (or inference module) returns another shape: said here, at
        # training's first evaluation or a checkpoint's load, not as a broadcast error later
        raise BackendError(f"policy type {policy.type_name!r}: its actions on an example "
                           f"observation have the shape {tuple(expected.shape)}, not (chunk, "
                           f"action_dim) = {want} (act() returns (batch, chunk, action_dim))")
    if not np.isfinite(expected).all():
        # finite weights, yet NaN or infinite actions (a normalization scale edited to 1e-30):
        # no backend can be compared with it, and none may run it
        raise BackendError("the policy's actions on an example observation are not finite "
                           "(NaN or infinite): its weights or normalization are unusable")
    split = reference.split
    if split:  # the split policy must compute the whole one's act: else every backend runs whole
        whole = EagerBackend(policy, split=False)
        fill_example(whole, policy)
        full = whole.run()
        if not agrees(expected, full):
            split, reference, expected = False, whole, full
    candidates = KINDS if kind == "auto" else (kind,)
    rows, best = [], None
    for k in candidates:
        problem = BACKENDS[k].unsupported(policy)
        if problem:  # only the backends that support this policy are tried
            rows.append({"backend": k, "error": problem})
            continue
        if apart and kind == "auto" and k == "torchscript":
            rows.append({"backend": k, "error": "not tried beside a running control loop (its "
                         "trace holds the interpreter lock)"})
            continue
        try:
            backend = (reference if k == "eager" else
                       make_backend(policy, k, threads, split, apart))
        except BackendError as exc:
            if kind != "auto":
                raise
            rows.append({"backend": k, "error": str(exc)})
            continue
        fill_example(backend, policy)
        got = backend.run()
        if not agrees(got, expected):
            err = float(np.max(np.abs(got - expected)))
            if kind != "auto":
                raise BackendError(f"backend {k} disagrees with eager PyTorch by {err:.3g}")
            rows.append({"backend": k, "error": f"disagrees with eager by {err:.3g}"})
            continue
        if kind != "auto":  # asked for by name: checked, not timed
            backend.reset()
            return backend, [{"backend": k}]
        us = time_backend(backend, calls) * 1e6
        rows.append({"backend": k, "median_us": us})
        if best is None or us < best[1]:
            best = (backend, us)
    if best is None:
        raise BackendError("no inference backend can run this model: "
                           + "; ".join(f"{r['backend']}: {r['error']}" for r in rows))
    best[0].reset()  # the measurements ran the policy: a stateful one starts afresh
    return best[0], rows
