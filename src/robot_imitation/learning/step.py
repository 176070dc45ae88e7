"""One training step, taken whole on the device: draw the batch, loss, backward, AdamW, EMA.

An eager step launches a few hundred small kernels (sampling, gathering, the network both
ways, the optimizer, the weights' moving average), and on a GPU their launches cost 2-3 ms
whatever the batch: a small policy trains at the speed of the Python loop, not of the GPU. On
one CUDA GPU (``TrainConfig.cuda_graph``, on by default) the step is therefore captured once
in two CUDA graphs after a few eager warm-up steps, and each later step replays them:

- the draw: batch indices from the trainer's own generator, the batch gathered from the
  arrays on the device (``DeviceData.batch``, images shifted), into static tensors;
- the update: forward and loss under bf16 autocast, backward, fused AdamW (``capturable``:
  its step counts on the device; the learning rate a tensor the schedule fills before each
  replay), and the moving average of the weights (its weight a tensor likewise).

Replays do what the eager steps do, in the same order, with the same random streams where
torch lets a graph advance a generator of its own (``CUDAGraph.register_generator_state``;
else the draw in graphs uses the default CUDA generator, seeded from the run's seed). A policy
whose loss cannot be captured (a host synchronization such as ``.item()``, a shape that
depends on the data) keeps training in eager steps, and the log says why. Several processes
(DistributedDataParallel) and the CPU always take eager steps.

``TrainConfig.compile`` (off by default) also runs the loss through ``torch.compile`` on one
CUDA GPU: its first warm-up step compiles forward and backward (Inductor's kernels; the
``max-autotune`` choice tunes them, without Inductor's own CUDA graphs, as the step's graphs
capture the compiled kernels). A camera policy's step is mostly its encoder's convolutions,
group norms and elementwise work, which compiling fuses. A loss that fails to compile trains
uncompiled, and the log says why.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..policies.base import Batch, Policy, PolicyError

# TrainConfig.compile's choices -> torch.compile's mode (the step's own graphs capture the
# compiled kernels, so Inductor's CUDA graphs stay off)
COMPILE_MODES = {"none": None, "default": "default",
                 "max-autotune": "max-autotune-no-cudagraphs"}


def compile_options(mode: str) -> dict:
    """Inductor's options for ``mode`` (a value of ``COMPILE_MODES``), with the convolutions'
    tensors channels-last throughout. Inductor's own rule leaves a graph whose convolutions
    all have <= 64 channels (the camera encoder's) in NCHW, and cuDNN then converts each
    convolution's tensors to NHWC and back: in a profile of the compiled camera policy's step
    on an H200 (batch 1,024), those conversions took 2.1 of its 10.4 ms."""
    from torch._inductor import list_mode_options

    return {**list_mode_options(mode), "force_layout_optimization": True}


def compiled_loss(model: torch.nn.Module, mode: str) -> tuple:
    """(``model`` through ``torch.compile`` with ``compile_options(mode)``, ""), or (None, the
    reason) where torch cannot compile here at all (``torch.compile`` raises for a Python it
    does not support); a failure of the compiler itself comes at the first call."""
    try:
        return torch.compile(model, dynamic=False, options=compile_options(mode)), ""
    except Exception as exc:  # noqa: BLE001 (no compiling here: uncompiled steps)
        return None, _reason(exc)


def cosine_lr(base: float, step: int, steps: int) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of ``steps``: cosine annealing
    from ``base`` to 0 (``CosineAnnealingLR`` with ``T_max=steps``, in closed form)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - 1, steps) / max(1, steps)))


def split_loss(out, policy: Policy | None = None) -> tuple:
    """(loss, metrics) from what ``Policy.loss`` returns; a loss that is not a scalar tensor
    (a family's per-sample losses left unaveraged) is a ``PolicyError`` naming the family."""
    loss, metrics = out if isinstance(out, tuple) else (out, {})
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        what = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                else type(loss).__name__)
        name = getattr(policy, "type_name", "") or type(policy).__name__
        raise PolicyError(f"policy type {name!r}: loss() returns {what}, not a scalar tensor "
                          "(average it over the batch)")
    return loss, dict(metrics or {})


class PolicyLoss(torch.nn.Module):
    """The policy's loss as a module's forward, so that DistributedDataParallel wraps it."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: dict, actions: torch.Tensor, mask: torch.Tensor):
        return split_loss(self.policy.loss(Batch(obs, actions, mask)), self.policy)


class EmaWeights:
    """An exponential moving average of a policy's parameters (buffers copied): after step t,
    ema = d * ema + (1 - d) * weights with d = min(decay, (1 + t) / (10 + t)), so early steps,
    far from the end of training, weigh little."""

    def __init__(self, policy: Policy, decay: float):
        import copy

        self.decay = decay
        self.policy = policy
        self.model = copy.deepcopy(policy).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._avg = list(self.model.parameters())
        self._weights = list(policy.parameters())
        self._avg_buffers = list(self.model.buffers())
        self._buffers = list(policy.buffers())

    def weight(self, step: int) -> float:
        """The weight of the new weights after step ``step``: 1 - d."""
        return 1.0 - min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int, weight: torch.Tensor | None = None) -> None:
        """Average in the policy's weights after ``step``; ``weight``: a tensor that holds the
        weight instead (filled before each replay when the update is in a CUDA graph)."""
        if weight is None:
            torch._foreach_lerp_(self._avg, self._weights, self.weight(step))
        else:
            delta = torch._foreach_sub(self._weights, self._avg)
            torch._foreach_mul_(delta, weight)
            torch._foreach_add_(self._avg, delta)
        if self._buffers:
            torch._foreach_copy_(self._avg_buffers, self._buffers)


class TrainStep:
    """The trainer's optimizer step over ``data`` (a ``DeviceData``). ``take(step)`` draws a
    batch and updates; ``draw()`` and ``update(batch)`` are its two halves (the benchmark
    times them apart). ``graph``: capture on CUDA after ``warmup`` eager steps (ignored on the
    CPU and with ``world`` > 1). ``captured`` says whether steps replay graphs; ``why_eager``
    why not, where capture was asked for and failed. ``compile``: a key of ``COMPILE_MODES``
    (on one CUDA GPU; ignored elsewhere); ``compiled`` says whether steps run the compiled
    loss, ``why_uncompiled`` why not, where compiling was asked for and failed."""

    def __init__(self, policy: Policy, data, *, batch_size: int, lr: float,
                 weight_decay: float, steps: int, shift: int = 0, amp: bool = True,
                 ema: EmaWeights | None = None, generator: torch.Generator | None = None,
                 model: torch.nn.Module | None = None, rank: int = 0, world: int = 1,
                 graph: bool = True, warmup: int = 3, compile: str = "none", log=print):
        self.policy, self.data, self.ema, self.log = policy, data, ema, log
        self.device = data.device
        cuda = self.device.type == "cuda"
        self.model = model if model is not None else PolicyLoss(policy)
        self.rank, self.world = rank, world
        self.per_rank = batch_size // world
        self.base_lr, self.steps, self.shift = lr, steps, shift
        self.amp = amp and cuda
        self.generator = generator
        self.graph = bool(graph and cuda and world == 1)
        self.warmup = max(1, warmup)
        # a tensor learning rate (and EMA weight) is read by a graph at each replay
        rate = torch.tensor(lr, device=self.device) if self.graph else lr
        self.opt = torch.optim.AdamW(policy.parameters(), lr=rate, weight_decay=weight_decay,
                                     fused=cuda, capturable=self.graph)
        self.ema_weight = torch.zeros((), device=self.device) if ema and self.graph else None
        self.captured = False
        self.why_eager = ""
        mode = COMPILE_MODES[compile]
        self._compiled, self.why_uncompiled = None, ""
        if mode and cuda and world == 1:
            self._compiled, self.why_uncompiled = compiled_loss(self.model, mode)
            if self._compiled is not None:
                log(f"[train] compile {compile}: the loss is compiled in the first step, "
                    "which takes that much longer")
            else:
                log(f"[train] compile {compile}: not available here ({self.why_uncompiled}): "
                    "uncompiled steps")
        elif mode:
            where = f"{world} processes" if world > 1 else f"device {self.device}"
            log(f"[train] compile {compile}: only on one CUDA GPU, not with {where}: "
                "uncompiled steps")
        self.last_lr = lr
        self._graphs = None
        self._static = None  # (drawn batch, (loss, metrics)) of the graphs
        self._eager_steps = 0
        self._steps_done = 0

    # ----------------------------------------------------------------- the halves
    def draw(self):
        """(global index, obs, actions, mask): this rank's slice of one global batch."""
        if self.captured:
            self._graphs[0].replay()
            return self._static[0]
        return self._draw()

    def update(self, batch, step: int | None = None):
        """One optimizer step on ``batch`` (what ``draw`` returned); returns (loss, metrics),
        the loss detached. ``step``: for the schedule and the moving average (default: one
        past the last)."""
        step = self._steps_done + 1 if step is None else step
        lr = cosine_lr(self.base_lr, step, self.steps)
        group = self.opt.param_groups[0]
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        self.last_lr = lr
        if self.ema_weight is not None:
            self.ema_weight.fill_(self.ema.weight(step))
        self._steps_done = step
        if self.graph and not self.captured and self._eager_steps >= self.warmup:
            self._capture()
        if self.captured:
            if batch is not self._static[0]:  # a batch from elsewhere: into the graph's input
                self._copy_into_static(batch)
            self._graphs[1].replay()
            return self._static[1]
        return self._eager(batch, step)

    def take(self, step: int):
        """Step ``step`` (1-based) of the run: draw, then update. Returns (loss, metrics,
        batch)."""
        batch = self.draw()
        loss, metrics = self.update(batch, step)
        return loss, metrics, batch

    # ----------------------------------------------------------------- eager
    def _draw(self):
        n = self.per_rank * self.world
        index = torch.randint(self.data.n, (n,), device=self.device, generator=self.generator)
        mine = index[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        obs, actions, mask = self.data.batch(mine, self.shift)
        return index, obs, actions, mask

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _forward_backward(self, batch, cache: bool):
        if self._compiled is not None:
            try:
                return self._loss_backward(self._compiled, batch, cache)
            except Exception as exc:  # noqa: BLE001 (a loss that does not compile: uncompiled)
                if torch.cuda.is_current_stream_capturing():
                    raise  # a capture's failure: eager steps, still compiled (_capture)
                self._compiled = None
                self.why_uncompiled = _reason(exc)
                self.log(f"[train] the loss could not be compiled ({self.why_uncompiled}): "
                         "uncompiled steps")
                self.opt.zero_grad(set_to_none=True)
        return self._loss_backward(self.model, batch, cache)

    def _loss_backward(self, model, batch, cache: bool):
        index, obs, actions, mask = batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=cache):
            loss, metrics = model(obs, actions, mask)
        if self.world > 1 and self.policy.loss_mean_over == "valid_steps":
            # Each rank's loss is averaged over its own valid chunk steps; rescale so that DDP's
            # mean of the ranks' gradients is the whole batch's (a loss averaged per sample
            # needs nothing).
            loss = loss * (mask.sum() * self.world / self.data.chunk_mask[index].sum())
        loss.backward()
        return loss.detach(), metrics

    def _eager(self, batch, step: int):
        side = self.graph and not self.captured  # warm-up steps before a capture: side stream
        stream = torch.cuda.Stream(self.device) if side else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self.opt.zero_grad(set_to_none=True)
            out = self._forward_backward(batch, cache=not self.graph)
            self.opt.step()
            if self.ema:
                self.ema.update(step, self.ema_weight)
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        self._eager_steps += 1
        return out

    # ----------------------------------------------------------------- graphs
    def _capture(self) -> None:
        draw, update = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        try:
            if self.generator is not None:
                if hasattr(draw, "register_generator_state"):
                    draw.register_generator_state(self.generator)
                else:
                    self.generator = None  # graphs draw from the default CUDA generator
            torch.cuda.synchronize(self.device)
            self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the grads
            pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(draw, pool=pool):
                batch = self._draw()
            with torch.cuda.graph(update, pool=pool):
                out = self._forward_backward(batch, cache=False)
                self.opt.step()
                if self.ema:
                    self.ema.update(0, self.ema_weight)
            torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 (any failure of capture: eager steps go on)
            self.graph = False
            self.why_eager = _reason(exc)
            self.log(f"[train] the training step could not be captured in a CUDA graph "
                     f"({self.why_eager}): eager steps")
            self.opt.zero_grad(set_to_none=True)
            return
        self._graphs, self._static, self.captured = (draw, update), (batch, out), True

    def _copy_into_static(self, batch) -> None:
        index, obs, actions, mask = self._static[0]
        if batch[0] is not None:  # a DataLoader's batch names no index
            index.copy_(batch[0])
        for key, value in batch[1].items():
            obs[key].copy_(value)
        actions.copy_(batch[2])
        mask.copy_(batch[3])


def _reason(exc: BaseException) -> str:
    """The exception's type and the first line of its message, and the next line where the
    first ends with a colon (as torch's ``BackendCompilerFailed``: "backend='inductor'
    raised:" then the compiler's error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if not (lines[0].endswith(":") and len(lines) > 1) \
        else f"{lines[0]} {lines[1]}"
    return f"{type(exc).__name__}: {text}"
