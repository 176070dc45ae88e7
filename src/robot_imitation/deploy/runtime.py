"""The policy node's control logic without ROS: observation dictionary in, command out.

- ``LoadedPolicy``: a checkpoint validated against the runtime spec, with its inference backend.
  Built off the control path (in a background thread for hot reloads).
- ``ChunkScheduler``: what to execute from action chunks: the first action of every prediction
  (receding horizon), whole chunks open loop, or a temporal ensemble of overlapping chunks.
- ``ActionFilter``: limits per action value and a maximum change per tick.
- ``PolicyController``: one tick: staleness, non-finite inputs and outputs, inference, chunking,
  clamping, with counters for diagnostics. Swapping the policy happens between ticks.

The observation dictionary comes from ``ObservationAssembler`` (``Spec.extract``): the same code
that built the training arrays.
"""
from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..learning.checkpoint import WEIGHTS, load_checkpoint
from ..spec import Spec
from .backends import Backend, low_dim_slices, select_backend
from .limits import ActionLimits, runtime_limits

CHUNK_MODES = ("first", "chunk", "ensemble")
SAFE_COMMANDS = ("hold", "zero")


@dataclass
class LoadedPolicy:
    path: str
    spec: Spec
    meta: dict
    backend: Backend
    backends: list          # what select_backend measured
    version: str            # short hash of the weights: tells two checkpoints apart
    load_seconds: float

    @property
    def chunk(self) -> int:
        return self.backend.cfg.chunk

    @property
    def policy_type(self) -> str:
        return self.backend.policy_type


def load_policy(path, runtime_spec: Spec | None, backend: str = "auto", threads: int = 1
                ) -> LoadedPolicy:
    """Load and validate a checkpoint and build its backend. Raises ``CheckpointError`` (a
    ``ValueError``) or ``BackendError`` with a message naming the problem."""
    t0 = time.perf_counter()
    policy, meta = load_checkpoint(path, runtime_spec)
    spec = Spec.from_dict(meta["spec"])
    chosen, rows = select_backend(policy, backend, threads)
    digest = hashlib.sha256((Path(path) / WEIGHTS).read_bytes()).hexdigest()[:12]
    return LoadedPolicy(path=str(path), spec=spec, meta=meta, backend=chosen, backends=rows,
                        version=digest, load_seconds=time.perf_counter() - t0)


def policy_from_module(policy, spec: Spec, meta: dict, backend: str = "eager", threads: int = 1,
                       path: str = "(in memory)") -> LoadedPolicy:
    """A ``LoadedPolicy`` of a policy module in memory (a copy on the CPU: the module itself is
    left where it is, in training or not), e.g. the trainer's policy between steps."""
    import copy

    t0 = time.perf_counter()
    module = copy.deepcopy(policy).cpu().eval()
    chosen, rows = select_backend(module, backend, threads)
    return LoadedPolicy(path=path, spec=spec, meta=meta, backend=chosen, backends=rows,
                        version="memory", load_seconds=time.perf_counter() - t0)


class ChunkScheduler:
    """Turns predicted chunks (chunk, A) into one action per tick.

    - ``first``: predict every tick, execute the first action (receding horizon).
    - ``chunk``: predict, execute ``execute`` actions of the chunk open loop (all by default),
      then predict again.
    - ``ensemble``: predict every tick; the action for tick t averages every chunk's prediction
      for t, weighted exp(-decay * i) with i = 0 for the oldest (temporal ensembling, as ACT).
    """

    def __init__(self, chunk: int, mode: str = "first", decay: float = 0.01, execute: int = 0):
        if mode not in CHUNK_MODES:
            raise ValueError(f"chunk mode must be one of {CHUNK_MODES}, not {mode!r}")
        self.chunk, self.mode, self.decay = chunk, mode, decay
        self.execute = min(execute or chunk, chunk)
        self.reset()

    def reset(self) -> None:
        self._queue: deque = deque()
        self._history: deque = deque(maxlen=self.chunk)  # (tick predicted at, chunk)
        self._tick = 0

    def needs_prediction(self) -> bool:
        return self.mode != "chunk" or not self._queue

    def add(self, chunk: np.ndarray) -> None:
        if self.mode == "chunk":
            self._queue.extend(chunk[: self.execute])
        elif self.mode == "ensemble":
            self._history.append((self._tick, chunk))
        else:
            self._queue.clear()
            self._queue.append(chunk[0])

    def next(self) -> np.ndarray:
        """The action for this tick (after ``add`` when ``needs_prediction``)."""
        if self.mode == "ensemble":
            preds = [c[self._tick - t0] for t0, c in self._history if self._tick - t0 < len(c)]
            w = np.exp(-self.decay * np.arange(len(preds)))   # oldest first
            action = np.tensordot(w / w.sum(), np.stack(preds), axes=1)
        else:
            action = self._queue.popleft()
        self._tick += 1
        return action


class ActionFilter:
    """The one filter every command of the policy node passes, safe commands included: clamp
    each action value to [lower, upper], and its change per tick to ``max_delta`` (inf where
    unlimited)."""

    def __init__(self, dim: int, lower=None, upper=None, max_delta=None):
        def vec(v, fill):
            a = np.atleast_1d(np.asarray(fill if v is None else v, dtype=np.float64))
            if a.size == 0:
                a = np.array([fill])
            if a.size == 1:
                a = np.full(dim, float(a.ravel()[0]))
            if a.shape != (dim,):
                raise ValueError(f"limits need 1 or {dim} values (one per action value), "
                                 f"got {a.size}")
            return a

        self.lower, self.upper = vec(lower, -np.inf), vec(upper, np.inf)
        delta = vec(max_delta, np.inf)
        self.max_delta = np.where(delta > 0, delta, np.inf)
        if np.any(self.lower > self.upper):
            raise ValueError("action limits: lower above upper")
        self.rate_limited = np.isfinite(self.max_delta)

    @classmethod
    def from_limits(cls, limits: ActionLimits | None, dim: int) -> "ActionFilter":
        """The filter of ``limits`` (None: no limit at all, an explicit choice)."""
        if limits is None:
            return cls(dim)
        return cls(dim, limits.lower, limits.upper, limits.max_delta)

    def __call__(self, action: np.ndarray, previous: np.ndarray | None) -> tuple[np.ndarray, int]:
        out = action
        if previous is not None:
            out = np.clip(out, previous - self.max_delta, previous + self.max_delta)
        out = np.clip(out, self.lower, self.upper)
        return out, int(np.count_nonzero(out != action))


@dataclass
class TickResult:
    action: np.ndarray | None   # None: publish nothing
    reason: str                 # "ok", "stale", "nonfinite_input", "nonfinite_output"
    clamped: int = 0
    inference_s: float = 0.0


@dataclass
class Counters:
    ticks: int = 0
    commands: int = 0
    stale: int = 0
    nonfinite_inputs: int = 0
    nonfinite_outputs: int = 0
    clamped_ticks: int = 0
    clamped_values: int = 0
    inferences: int = 0
    swaps: int = 0


class PolicyController:
    """One control tick at a time. Not thread-safe: call from the control thread only; other
    threads hand a new policy over with ``offer`` and it is swapped in at the next tick."""

    def __init__(self, spec: Spec, policy: LoadedPolicy, action_filter: ActionFilter,
                 chunk_mode: str = "first", ensemble_decay: float = 0.01,
                 chunk_execute: int = 0, max_age: float = 0.0, safe_command: str = "hold"):
        if safe_command not in SAFE_COMMANDS:
            raise ValueError(f"safe_command must be one of {SAFE_COMMANDS}")
        self.spec = spec
        self.filter = action_filter
        self.chunk_mode, self.decay, self.chunk_execute = chunk_mode, ensemble_decay, chunk_execute
        self.max_age, self.safe_command = max_age, safe_command
        self.counters = Counters()
        self.last_command: np.ndarray | None = None
        self._offered: tuple | None = None  # (policy, filter or None)
        self._install(policy)
        self.splits = []
        start = 0
        for f in spec.actions:
            self.splits.append((f.key, start, start + f.shape[0]))
            start += f.shape[0]
        low = {key: i for i, key in enumerate(policy.backend.cfg.low_dim_keys)}
        # relative actions: on the first tick, the max-change limit applies from the measured
        # values these actions are relative to
        self.relative = [(i0, i1, f.relative_to) for (_, i0, i1), f in
                         zip(self.splits, spec.actions) if f.relative_to in low]

    def _install(self, policy: LoadedPolicy, action_filter: ActionFilter | None = None) -> None:
        self.policy = policy
        if action_filter is not None:
            self.filter = action_filter
        self.backend = policy.backend
        cfg = policy.backend.cfg
        self.scheduler = ChunkScheduler(cfg.chunk, self.chunk_mode, self.decay, self.chunk_execute)
        self._low_slices = low_dim_slices(cfg)

    def offer(self, policy: LoadedPolicy, action_filter: ActionFilter | None = None) -> None:
        """Hand over a new policy, with the limits it runs under (default: the current ones),
        from any thread; both take over at the next tick."""
        self._offered = (policy, action_filter)

    def reset(self) -> None:
        """Forget chunks in flight, the previous command and what the policy keeps between
        calls (a new episode, re-activation)."""
        self.scheduler.reset()
        self.backend.reset()
        self.last_command = None

    def safe(self) -> np.ndarray | None:
        """The safe command before filtering: zeros, or the last command (None before any)."""
        if self.safe_command == "zero":
            return np.zeros(self.spec.action_dim)
        return self.last_command

    def _reference(self, obs: dict) -> np.ndarray | None:
        """What the maximum change per tick counts from: the last command, or before the first
        one, the measured values that relative actions are relative to (NaN where unknown)."""
        if self.last_command is not None:
            return self.last_command
        if not self.relative:
            return None
        reference = np.full(self.spec.action_dim, np.nan)
        for i0, i1, key in self.relative:
            reference[i0:i1] = np.asarray(obs[key], dtype=np.float64)[: i1 - i0]
        return reference

    def _limit(self, action: np.ndarray, obs: dict) -> tuple[np.ndarray, int]:
        if self.last_command is not None:  # every tick but the first: no extra work
            return self.filter(action, self.last_command)
        reference = self._reference(obs)
        if reference is not None:  # values without a measured reference: no rate limit yet
            reference = np.where(np.isnan(reference), action, reference)
        return self.filter(action, reference)

    def tick(self, obs: dict, age: float | None = None) -> TickResult:
        c = self.counters
        c.ticks += 1
        offered, self._offered = self._offered, None
        if offered is not None:
            self._install(*offered)
            c.swaps += 1
        if age is not None and self.max_age > 0 and age > self.max_age:
            c.stale += 1
            self.scheduler.reset()
            action = self.safe()
            if action is not None and self.safe_command == "zero":
                # through the same filter as every command: never a jump of more than max_delta
                # from the last command (or the measured joints); with no reference for a
                # rate-limited value, nothing is published rather than a jump
                reference = self._reference(obs)
                unknown = np.ones(len(action), bool) if reference is None else \
                    ~np.isfinite(reference)
                if np.any(unknown & self.filter.rate_limited):
                    return TickResult(None, "stale")
                action, clamped = self._limit(action, obs)
                if clamped:
                    c.clamped_ticks += 1
                    c.clamped_values += clamped
                self.last_command = action
            if action is not None:
                c.commands += 1
            return TickResult(action, "stale")
        inference_s = 0.0
        low = self.backend.low[0]
        for key, a, b in self._low_slices:
            low[a:b] = obs[key]
        if not np.isfinite(low).all():  # checked every tick, also while a chunk runs open loop
            c.nonfinite_inputs += 1
            self.scheduler.reset()
            return TickResult(None, "nonfinite_input")
        if self.scheduler.needs_prediction():
            for key, img in self.backend.images.items():
                img[0] = obs[key]
            t = time.perf_counter()
            chunk = self.backend.run()
            inference_s = time.perf_counter() - t
            c.inferences += 1
            if not np.isfinite(chunk).all():
                c.nonfinite_outputs += 1
                self.scheduler.reset()
                return TickResult(None, "nonfinite_output", inference_s=inference_s)
            self.scheduler.add(chunk)
        action, clamped = self._limit(self.scheduler.next(), obs)
        if clamped:
            c.clamped_ticks += 1
            c.clamped_values += clamped
        self.last_command = action
        c.commands += 1
        return TickResult(action, "ok", clamped, inference_s)

    def split(self, action: np.ndarray) -> list:
        """[(action key, values)] in spec order."""
        return [(key, action[a:b]) for key, a, b in self.splits]


def make_controller(loaded: LoadedPolicy, spec: Spec | None = None, *, robot: str = "",
                    lower=None, upper=None, max_delta=None, allow_unlimited: bool = False,
                    chunk_mode: str = "first", ensemble_decay: float = 0.01,
                    chunk_execute: int = 0, max_age: float = 0.0,
                    safe_command: str = "hold") -> tuple[PolicyController, ActionLimits | None]:
    """The controller the policy node runs for ``loaded`` on ``spec`` (default: the
    checkpoint's), under the action limits ``runtime_limits`` gives (the checkpoint's, replaced
    in part or whole by ``robot``/``lower``/``upper``/``max_delta``). Every world that runs a
    policy (the node, the gymnasium rollouts) builds its controller here, so that they command
    alike. Returns (controller, limits); raises ``LimitsError`` as ``runtime_limits`` does."""
    spec = spec or loaded.spec
    limits = runtime_limits(spec, loaded.meta.get("action_limits"), robot, lower, upper,
                            max_delta, allow_unlimited)
    controller = PolicyController(spec, loaded, ActionFilter.from_limits(limits, spec.action_dim),
                                  chunk_mode, ensemble_decay, chunk_execute, max_age,
                                  safe_command)
    return controller, limits
