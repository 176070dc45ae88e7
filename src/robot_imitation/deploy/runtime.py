"""The policy node's control logic without ROS: observation dictionary in, command out.

- ``LoadedPolicy``: a checkpoint validated against the runtime spec, with its inference backend.
  Built off the control path (in a background thread for hot reloads).
- ``ChunkScheduler``: what to execute from action chunks: the first action of every prediction
  (receding horizon), whole chunks open loop, or a temporal ensemble of overlapping chunks.
- ``chunking``: the chunk execution a policy runs under; ``auto`` is its family's own
  (``Policy.deployment``).
- ``ActionFilter`` (``limits``): limits per action value and a maximum change per tick.
- ``PolicyController``: one tick: staleness, non-finite inputs and outputs, inference, chunking,
  clamping, with counters for diagnostics. Swapping the policy happens between ticks. In chunk
  execution with ``prefetch`` L >= 1 the next chunk is computed on a worker thread while the
  current one executes (see the class). A camera frame is encoded once, whatever the number of
  ticks that use it (``camera_encoding``: on the tick, ahead of it on a thread of its own, or
  between the ticks, a stage at a time, on the control thread). A chunk's actions are one a
  control period: ticks that say their state's time (trigger state) and come faster than the
  control rate run the same chunk action within a period (see ``PolicyController.tick``).

The observation dictionary comes from ``ObservationAssembler`` (``Spec.extract``): the same code
that built the training arrays.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..learning.checkpoint import WEIGHTS, load_checkpoint
from ..spec import Spec
from .backends import Backend, low_dim_slices, select_backend
from .limits import TICK_SLACK, ActionFilter, ActionLimits, runtime_limits

CHUNK_MODES = ("first", "chunk", "ensemble")
SAFE_COMMANDS = ("hold", "zero")
LATE_CHUNKS = ("wait", "hold")
CAMERA_ENCODINGS = ("inline", "ahead", "between")
# A state at least this share of a control period under a period after the state before it is
# a driver's state of the next period (jitter), counted from its own time (``_periods``).
PERIOD_SLACK = 0.1
# The CPU priority of the thread that encodes frames ahead: idle (Linux SCHED_IDLE: any thread
# that wakes preempts it at once), low (nice 19) or normal (the control thread's).
ENCODER_PRIORITIES = ("idle", "low", "normal")


def lower_this_thread(priority: str) -> str:
    """Run the calling thread at ``priority`` (one of ``ENCODER_PRIORITIES``; threads it starts
    later inherit it, no other thread changes). An unprivileged thread cannot raise its
    priority back, so only a thread kept for the work calls this. Returns what it runs at: the
    priority, or "normal (<priority> refused: <why>)"."""
    tid = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "low":
            os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (OSError, AttributeError) as exc:  # not Linux, or refused by the system's policy
        return f"normal ({priority} refused: {exc})"
    return priority


def prepare_stages(loaded: "LoadedPolicy") -> None:
    """Make each camera's staged encoder of ``loaded`` (``camera_encoding`` between; made once,
    and off the control path where the caller calls this as it loads). ``ValueError`` where a
    camera's encoder cannot run in stages (a family with an encoder of its own form)."""
    backend = loaded.backend
    if not backend.split:
        return
    for key in backend.images:
        if backend.staged(key) is None:
            raise ValueError(f"camera_encoding between: {loaded.policy_type}'s encoder of camera "
                             f"{key!r} cannot run in stages (use ahead or inline)")


WINDOW = 4096  # times kept for the percentiles of the diagnostics


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


def reload_backend(asked: str, running: str) -> tuple[str, bool]:
    """The backend a hot reload loads with, beside a running control loop: (kind, whether a
    refusal of that kind is retried with ``auto``). ``asked``: the node's ``backend`` (not
    ``auto``: that one, refused as at start); ``running``: the kind of the policy running. With
    ``auto`` the running kind first, where the new model runs on it (else chosen anew), but
    TorchScript is chosen anew at once: its trace holds the interpreter lock for up to 0.3 s
    (a diffusion policy), every tick of the loop waiting (``select_backend(apart=True)``)."""
    if asked != "auto":
        return asked, False
    if running == "torchscript":
        return "auto", False
    return running, True


def load_policy(path, runtime_spec: Spec | None, backend: str = "auto", threads: int = 1,
                apart: bool = False) -> LoadedPolicy:
    """Load and validate a checkpoint and build its backend. Raises ``CheckpointError`` (a
    ``ValueError``) or ``BackendError`` with a message naming the problem. ``apart``: a load
    beside a running control loop (a reload): an ONNX export runs in a child process, and no
    TorchScript is traced unless asked for by name (``select_backend``)."""
    t0 = time.perf_counter()
    policy, meta = load_checkpoint(path, runtime_spec)
    spec = Spec.from_dict(meta["spec"])
    chosen, rows = select_backend(policy, backend, threads, apart=apart)
    digest = (meta.get("weights_sha256") or  # (checked by load_checkpoint)
              hashlib.sha256((Path(path) / WEIGHTS).read_bytes()).hexdigest())[:12]
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
      then predict again; ``add(chunk, skip)`` of a chunk predicted ``skip`` ticks ago executes
      its actions from index ``skip`` on (those before were for ticks gone by).
    - ``ensemble``: predict every tick; the action for tick t averages every chunk's prediction
      for t, weighted exp(-decay * i) with i = 0 for the oldest (temporal ensembling, as ACT).

    A tick is a control period: ``skip(n)`` passes n periods without an action (states further
    apart than a period), so that each chunk's index i stays the period i after its own.
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

    def skip(self, n: int) -> None:
        """Pass ``n`` ticks without executing their actions (their periods are gone by)."""
        if self.mode == "chunk":
            for _ in range(min(n, len(self._queue))):
                self._queue.popleft()
        elif self.mode == "ensemble":
            self._tick += n

    @property
    def remaining(self) -> int:
        """Actions left to execute of the current chunk (chunk mode)."""
        return len(self._queue)

    def add(self, chunk: np.ndarray, skip: int = 0) -> None:
        if self.mode == "chunk":
            self._queue.extend(chunk[skip: self.execute])
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


def chunking(policy: LoadedPolicy, chunk_mode: str = "auto", chunk_execute: int = 0,
             prefetch: int = 0) -> dict:
    """The chunk execution ``policy`` runs under: {chunk_mode, chunk_execute (the actions of a
    chunk used, 1..chunk), prefetch (0 outside chunk mode), auto}. ``auto`` takes the policy
    family's deployment defaults (``Policy.deployment``), a ``chunk_execute`` or ``prefetch``
    given (non-zero) taking precedence; the chunk's size comes from the policy, so a policy
    swapped in is resolved again. ``ValueError`` naming the values for a prefetch that leaves
    no action of a chunk to execute."""
    if chunk_mode != "auto" and chunk_mode not in CHUNK_MODES:
        raise ValueError(f"chunk mode must be auto or one of {CHUNK_MODES}, not {chunk_mode!r}")
    for name, v in (("chunk_execute", chunk_execute), ("prefetch", prefetch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, not {v!r}")
    chunk, mode, execute, lead = policy.chunk, chunk_mode, chunk_execute, prefetch
    if chunk_mode == "auto":
        from ..policies.base import Policy
        from ..policies.registry import UnknownPolicyError, policy_class

        try:
            family = policy_class(policy.policy_type)
        except UnknownPolicyError:  # a module of an unregistered class: the base's defaults
            family = Policy
        own = family.deployment(policy.backend.cfg)
        mode, execute = own["chunk_mode"], chunk_execute or own["chunk_execute"]
    used = min(execute or chunk, chunk)
    if chunk_mode == "auto" and not prefetch:  # the family's lead, within what is executed
        lead = min(own["prefetch"], used - 1)
    if mode != "chunk":
        lead = 0
    elif lead >= used:
        raise ValueError(f"prefetch {lead} leaves no action of a chunk to execute: it must be "
                         f"below chunk_execute ({used} of a chunk of {chunk})")
    return {"chunk_mode": mode, "chunk_execute": used, "prefetch": lead,
            "auto": chunk_mode == "auto"}


class TimeWindow:
    """The newest ``size`` durations (seconds), for percentiles."""

    def __init__(self, size: int = WINDOW):
        self.values = np.zeros(size)
        self.n = 0

    def add(self, v: float) -> None:
        self.values[self.n % len(self.values)] = v
        self.n += 1

    def summary(self) -> dict:
        v = self.values[: min(self.n, len(self.values))]
        if v.size == 0:
            return {}
        p50, p99 = np.percentile(v, [50, 99])
        return {"p50_ms": float(p50) * 1e3, "p99_ms": float(p99) * 1e3,
                "max_ms": float(v.max()) * 1e3}


@dataclass
class TickResult:
    action: np.ndarray | None   # None: publish nothing
    # "ok", "stale", "nonfinite_input", "nonfinite_output", "late" (the chunk in flight is not
    # ready: the safe command), "inference_error" (the safe command; ``error`` says why)
    reason: str
    clamped: int = 0
    inference_s: float = 0.0
    error: str = ""


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
    chunks: int = 0             # chunks whose actions went into execution
    discarded_chunks: int = 0   # chunks in flight dropped (reset, swap, stale/NaN input, late)
    waited_ticks: int = 0       # ticks that waited for a prefetched chunk (late_chunk wait)
    no_action_ticks: int = 0    # ticks without a chunk's action: the safe command (hold)
    inference_errors: int = 0   # exceptions in inference on the worker: the safe command
    frames_encoded: int = 0     # camera frames run through their encoder
    # ticks that answered a state of a control period already begun (trigger state, states
    # faster than the control rate): its chunk action again, through the filter
    same_period_ticks: int = 0
    # ticks whose newest camera frame was still being encoded (camera_encoding ahead): the
    # previous frame's features were used
    previous_frame_ticks: int = 0
    # frames encoded on the tick because the encoder had been on the frame before for longer
    # than max_frame_lag (ahead: a starved encoder)
    late_frames: int = 0


@dataclass
class _Job:
    """A chunk in flight: computed on the worker from the observation of control period
    ``tick``."""
    future: Future
    generation: int
    tick: int


class PolicyController:
    """One control tick at a time. Not thread-safe: call from the control thread only; other
    threads hand a new policy over with ``offer`` and it is swapped in at the next tick.

    Chunk execution with ``prefetch`` L >= 1: when L actions of the current chunk are left, the
    next chunk is computed on a worker thread (one in flight at most) from a copy of that tick's
    inputs (the backend's buffers are the worker's alone then: the tick checks its inputs in its
    own), and executed from index L on when the current one runs out: the action at tick t+L+k
    is the new chunk's index L+k, as if it had been computed inside tick t. A chunk not ready by
    then is waited for (``late_chunk`` "wait": each episode's commands are the same on any
    machine, as lockstep simulation and the gymnasium world need), or the tick gives the safe
    command and the chunk, when it comes, executes from the index of the tick it is used at
    ("hold": real time, the tick never waits for inference). The first chunk of an episode is
    computed the same way (waited for, or held). A new episode, a policy swap, a stale or
    non-finite input drop the chunk in flight: its generation is no longer the controller's,
    and a chunk that has not started is never computed. The backend's reset for a new episode
    runs on the worker too, between the inferences, never during one.

    Cameras: a policy whose backend runs split (``Backend.split``) encodes each camera frame once
    (a frame equal to the one encoded before is not encoded again), and runs only the head on
    the ticks in between. ``camera_encoding`` "inline": a new frame is encoded in the tick that
    first sees it (or with the chunk computed from it), so every chunk is computed from the
    features of its own observation's frames, exactly; "ahead": a new frame is encoded on a
    thread of its own while ticks go on, each tick using the newest frame whose features are
    ready (a frame's features reach the ticks one encoding time after the frame: no tick waits
    for an encoder; the first frame of an episode is encoded on its tick). The encoder's thread
    runs at ``encoder_priority`` (default idle: the control thread, the middleware's and the
    other processes' preempt it), and once a frame has been in encoding for longer than
    ``max_frame_lag`` seconds (> 0; an encoder starved on a busy machine), the ticks encode the
    newest frames themselves until the encoder is done with it: the features a command comes
    from are never older than that bound plus one encoding, and no tick waits for the encoder's
    thread. "between": as "ahead", but the frame is encoded on the control thread between the
    ticks: the encoder cut into stages of about a quarter of a millisecond
    (``Backend.staged``), and ``between(deadline)``, called by the control loop once a tick's
    command is out, runs the stages that fit before the deadline (each stage's expected time
    is the median of its recent ones). No other thread takes a core from the ticks, and the
    encoding runs only in the time the control loop gives it; ``max_frame_lag`` bounds the
    frames' age as in "ahead" (a frame in encoding for longer is finished on the tick). A
    backend that runs whole encodes inline, with every inference."""

    def __init__(self, spec: Spec, policy: LoadedPolicy, action_filter: ActionFilter,
                 chunk_mode: str = "auto", ensemble_decay: float = 0.01,
                 chunk_execute: int = 0, max_age: float = 0.0, safe_command: str = "hold",
                 prefetch: int = 0, late_chunk: str = "wait", camera_encoding: str = "inline",
                 encoder_priority: str = "idle", max_frame_lag: float = 0.0):
        if safe_command not in SAFE_COMMANDS:
            raise ValueError(f"safe_command must be one of {SAFE_COMMANDS}")
        if late_chunk not in LATE_CHUNKS:
            raise ValueError(f"late_chunk must be one of {LATE_CHUNKS}, not {late_chunk!r}")
        if camera_encoding not in CAMERA_ENCODINGS:
            raise ValueError(f"camera_encoding must be one of {CAMERA_ENCODINGS}, not "
                             f"{camera_encoding!r}")
        if encoder_priority not in ENCODER_PRIORITIES:
            raise ValueError(f"encoder_priority must be one of {ENCODER_PRIORITIES}, not "
                             f"{encoder_priority!r}")
        if not max_frame_lag >= 0:
            raise ValueError(f"max_frame_lag must be >= 0, not {max_frame_lag:g}")
        self.camera_encoding = camera_encoding
        # what the encoder's thread runs at, once it runs (a refusal is said here), and its id
        self.encoder_priority, self.encoder_thread_id = encoder_priority, None
        self._encoder_priority, self.max_frame_lag = encoder_priority, float(max_frame_lag)
        self.encode_times = TimeWindow()      # seconds per camera frame encoded
        self._encoder: ThreadPoolExecutor | None = None
        self.spec = spec
        self.filter = action_filter
        self.chunk_mode, self.decay, self.chunk_execute = chunk_mode, ensemble_decay, chunk_execute
        self.prefetch_setting, self.late_chunk = prefetch, late_chunk
        self.max_age, self.safe_command = max_age, safe_command
        self.counters = Counters()
        self.inference_times = TimeWindow()   # seconds per chunk (per inference)
        self.last_command: np.ndarray | None = None
        # the time (s) of the state the last command answered, where ticks say it (trigger
        # state): the change allowed counts the control periods since it (see ``_limit``)
        self._when: float | None = None
        self._state_when: float | None = None   # that of the state this tick answers
        self._rate = float(spec.control_rate)
        self._offered: tuple | None = None  # (policy, filter or None)
        self._executor: ThreadPoolExecutor | None = None
        self._job: _Job | None = None
        self._generation = 0        # a chunk computed for another generation is never used
        self._t = 0                 # ticks
        # control periods, for the index a chunk in flight starts at: one a tick, or with the
        # states' times (trigger state), those between them (``_periods``)
        self._p = 0
        self._period_when: float | None = None  # the time (s) the current period began at
        self._last_state: float | None = None   # that of the state before
        self._target: np.ndarray | None = None  # this period's chunk action (before the filter)
        self._reset_backend = False  # due on the worker before its next inference
        self.scheduler: ChunkScheduler | None = None
        self._ahead = False
        self._forget_frames()
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

    def resolve(self, policy: LoadedPolicy) -> dict:
        """The chunk execution ``policy`` would run under here (``chunking``, with the late
        chunk policy); ``ValueError`` when it cannot."""
        if self.camera_encoding == "between":
            prepare_stages(policy)
        return {**chunking(policy, self.chunk_mode, self.chunk_execute, self.prefetch_setting),
                "late_chunk": self.late_chunk}

    def _install(self, policy: LoadedPolicy, action_filter: ActionFilter | None = None) -> None:
        settings = self.resolve(policy)
        self._discard()
        self.policy = policy
        if action_filter is not None:
            self.filter = action_filter
        self.backend = policy.backend
        cfg = policy.backend.cfg
        self.settings = settings
        self.prefetch = settings["prefetch"]
        self.scheduler = ChunkScheduler(cfg.chunk, settings["chunk_mode"], self.decay,
                                        settings["chunk_execute"])
        self._low_slices = low_dim_slices(cfg)
        # the tick's inputs: the backend's buffer, or with a worker, a buffer of the tick's own
        self._low = np.zeros_like(self.backend.low) if self.prefetch else self.backend.low
        self._cameras = list(self.backend.images)
        self._ahead = self.camera_encoding in ("ahead", "between") and self.backend.split
        # between: each camera's encoder in stages (made off the control path where the caller
        # prepared them: ``prepare_stages``)
        self._staged = {} if not (self._ahead and self.camera_encoding == "between") else {
            key: self.backend.staged(key) for key in self._cameras}
        self._forget_frames()

    def _forget_frames(self) -> None:
        """No frame counts as encoded: the next of each camera is (a new backend, a chunk in
        flight dropped with the frames it carried, a new episode)."""
        self._sent: dict = {}       # key: the frame last handed to the backend (or the encoder)
        self._ready: dict = {}      # key: the features of that frame, ready (ahead)
        self._encoding: dict = {}   # key: Future of its features (ahead)
        self._handed: dict = {}     # key: time.monotonic() its frame was handed to the encoder
        self._late: dict = {}       # key: Future of a frame given up on (max_frame_lag)
        self._begun: dict = {}      # key: the tick its frame in encoding was taken (between)

    def describe(self) -> str:
        """The chunk execution in one line (logs)."""
        s = self.settings
        out = f"chunk_mode {s['chunk_mode']}" + (
            f" (auto: {self.policy.policy_type}'s default)" if s["auto"] else "")
        if s["chunk_mode"] == "chunk":
            out += f", chunk_execute {s['chunk_execute']} of {self.policy.chunk}"
            if s["prefetch"]:
                out += f", prefetch {s['prefetch']}, late_chunk {s['late_chunk']}"
        return out

    def offer(self, policy: LoadedPolicy, action_filter: ActionFilter | None = None) -> None:
        """Hand over a new policy, with the limits it runs under (default: the current ones),
        from any thread; both take over at the next tick. ``ValueError`` (nothing changes) when
        the chunk execution cannot run it (a prefetch not below its chunk)."""
        self.resolve(policy)
        self._offered = (policy, action_filter)

    def reset(self) -> None:
        """Forget chunks in flight, the previous command and what the policy keeps between
        calls (a new episode, re-activation)."""
        self._discard()
        self._forget_frames()  # (ahead: an episode never starts on the last one's frames)
        if self.prefetch:  # the worker may be running the backend: reset it there, in turn
            self._reset_backend = True
        else:
            self.backend.reset()
        self.last_command = None
        self._when = None
        self._period_when = self._last_state = None

    def close(self) -> None:
        """Stop the workers (a chunk or frame being computed finishes; none is started)."""
        self._discard()
        self._forget_frames()
        for pool in (self._executor, self._encoder):
            if pool is not None:
                pool.shutdown(wait=False)
        self._executor = self._encoder = None

    def wait_inflight(self, timeout: float | None = None) -> bool:
        """Wait until the chunk in flight, if any, is computed; False on timeout."""
        return self._job is None or not wait_for([self._job.future], timeout).not_done

    def wait_frames(self, timeout: float | None = None) -> bool:
        """Wait until the encoder's thread is done with the frames it has (ahead; between:
        their stages are run now); False on timeout."""
        if self._staged:
            for job in self._encoding.values():
                job.finish()
            return True
        jobs = [*self._encoding.values(), *self._late.values()]
        return not jobs or not wait_for(jobs, timeout).not_done

    def timing(self) -> dict:
        """Seconds per chunk (per inference): {p50_ms, p99_ms, max_ms} of the newest ones."""
        return self.inference_times.summary()

    def encode_timing(self) -> dict:
        """Seconds per camera frame encoded ({p50_ms, p99_ms, max_ms}; {} before any)."""
        return self.encode_times.summary()

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
        """``action`` through the filter, its change counted from the last command (or the
        measured values). ``self._state_when``: the time (s) of the state it answers (``tick``'s
        ``when``; None: a whole tick): states that come
        faster than the control rate (a robot's driver at 100 Hz answered state by state)
        share one period's change between them, so the commands move no faster than
        ``max_delta`` per control period; a state a whole period (or more) after the last
        answered one is a whole tick, as in lockstep."""
        if self.last_command is not None:  # every tick but the first: no extra work
            when = self._state_when
            if when is None or self._when is None:
                return self.filter(action, self.last_command)
            ticks = (when - self._when) * self._rate
            return self.filter(action, self.last_command,
                               1.0 if ticks >= 1.0 - TICK_SLACK else max(ticks, 0.0))
        reference = self._reference(obs)
        if reference is not None:  # values without a measured reference: no rate limit yet
            f = self.filter  # (the action within the bounds: no jump counted from outside)
            reference = np.where(np.isnan(reference),
                                 np.minimum(np.maximum(action, f.lower), f.upper), reference)
        return self.filter(action, reference)

    def _safe_result(self, obs: dict, reason: str, error: str = "") -> TickResult:
        """The safe command, through the same filter as every command."""
        c = self.counters
        action = self.safe()
        if action is not None:
            # never a jump of more than max_delta from the last command (or the measured
            # joints); with no reference for a rate-limited value, nothing is published rather
            # than a jump. ``hold`` passes the filter too: the last command is itself unless
            # the limits changed since (a checkpoint of narrower ones swapped in), then it is
            # brought within them (a jump, counted: ``ActionFilter.jumps``)
            reference = self._reference(obs)
            unknown = np.ones(len(action), bool) if reference is None else \
                ~np.isfinite(reference)
            if np.any(unknown & self.filter.rate_limited):
                return TickResult(None, reason, error=error)
            action, clamped = self._limit(action, obs)
            if clamped:
                c.clamped_ticks += 1
                c.clamped_values += clamped
            self.last_command = action
            self._when = self._state_when
        if action is not None:
            c.commands += 1
        return TickResult(action, reason, error=error)

    def _discard(self) -> None:
        """Drop the chunk executing and the one in flight (whose result is then never used)."""
        self._target = None
        if self.scheduler is not None:
            self.scheduler.reset()
        if self._job is not None:
            self._generation += 1   # the worker skips it if it has not started
            self._job = None
            self.counters.discarded_chunks += 1
            if not self._ahead:     # the frames it carried may never reach the backend
                self._sent = {}

    # ------------------------------------------------------------------ cameras
    def _new_frame(self, key: str, frame: np.ndarray) -> bool:
        last = self._sent.get(key)
        return last is None or not np.array_equal(last, frame)

    def _encode_inline(self, obs: dict) -> None:
        """On the tick, without a worker: each new frame into the backend's buffer, encoded."""
        for key in self._cameras:
            buffer = self.backend.images[key]
            if self._new_frame(key, obs[key]):
                buffer[0] = obs[key]
                t = time.perf_counter()
                self.backend.encode(key)
                if self.backend.split:
                    self.encode_times.add(time.perf_counter() - t)
                    self.counters.frames_encoded += 1
                self._sent[key] = buffer[0]

    def _frames_for_worker(self, obs: dict) -> dict:
        """With a worker, inline: copies of the new frames, for the worker to encode."""
        out = {}
        for key in self._cameras:
            if self._new_frame(key, obs[key]):
                out[key] = self._sent[key] = np.array(obs[key])
        return out

    def _encode_frame(self, backend: Backend, key: str, frame: np.ndarray, threads: int):
        """On the encoder thread: (features, seconds) of ``frame``."""
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        t = time.perf_counter()
        features = backend.encode_frame(key, frame[None])
        return features, time.perf_counter() - t

    def between(self, deadline: float, start: float | None = None) -> None:
        """``camera_encoding`` between: run the stages of the frames in encoding, one after
        another, while the next one is expected to end before ``deadline``
        (``time.perf_counter()``), the first not before ``start`` (a wait only where a stage
        is to run). The control loop calls it once a tick's command is out. A
        frame taken on this tick starts here only if all its stages fit: otherwise from the
        next tick's call on, so that the encoding stays clear of the traffic that came with the
        frame (at 500 Hz with a 30 Hz camera, the states sent with a frame were answered in
        0.95-1.20 ms at the median this way, against 1.50-1.58 ms with the first stages right
        after their tick). ``start``: the command just sent is on its way meanwhile (stages
        right after it held up its delivery on a 2-core machine: the states of the ticks that
        ran stages answered in 1.0 ms at the median against 0.43 ms without). A stage that does
        not fit after ``start`` but does from now runs at once: skipped, it never ran (a stage
        longer than the time from start to the deadline, as on a slower machine), and its frame
        was finished on a tick, all its stages at once, once ``max_frame_lag`` was past. The
        first stage after a wait runs if it fit from ``start``: a sleep wakes 90 us late at the
        median here, and a stage that just fit (0.43 ms stages, 0.5 ms from start to the
        deadline at 500 Hz) did not any more, for seconds on end."""
        for key, job in self._encoding.items():
            if self._begun.get(key) == self._t and \
                    time.perf_counter() + job.remaining_cost() > deadline:
                continue   # a frame taken on this tick that does not fit whole: from the next on
            if start is not None and not job.done():
                if start + job.next_cost() <= deadline:
                    wait = start - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                        # a sleep wakes late (the timer's slack): the stage that fit from
                        # start runs unless it woke later than half the start-to-deadline
                        if time.perf_counter() - start <= 0.5 * (deadline - start):
                            job.step()
                start = None   # (else: from now, if it fits)
            while not job.done() and time.perf_counter() + job.next_cost() <= deadline:
                job.step()

    def _watch_frames(self, obs: dict) -> TickResult | None:
        """Ahead, every tick: take the features that are ready and start encoding the new
        frames (one frame in flight per camera: the newest is taken when it is done). On the
        tick instead: the first frame of each camera (nothing to use meanwhile) and, once a
        frame has been in encoding for longer than ``max_frame_lag`` (the encoder starved on
        a busy machine), the newest frame and those after it until the encoder is done with
        that one. None, or the result of a tick whose encoding failed."""
        c = self.counters
        for key in self._cameras:
            job = self._encoding.get(key)
            if job is not None and self._staged and not job.done() and self.max_frame_lag \
                    and time.monotonic() - self._handed[key] > self.max_frame_lag:
                job.finish()    # stages starved (no idle time between the ticks): on the tick
                c.late_frames += 1
            if job is not None:
                if job.done():
                    del self._encoding[key]
                    failed = self._take_features(obs, key, job.result)
                    if failed is not None:
                        return failed
                elif self.max_frame_lag and \
                        time.monotonic() - self._handed[key] > self.max_frame_lag:
                    self._late[key] = self._encoding.pop(key)  # its features, when done, unused
                    del self._sent[key]   # the newest frame is encoded now, whatever it is
            late = self._late.get(key)
            if late is not None and late.done():
                del self._late[key]
                late = None
            if key not in self._encoding and self._new_frame(key, obs[key]):
                frame = self._sent[key] = np.array(obs[key])
                if late is not None or key not in self._ready:   # on the tick
                    c.late_frames += late is not None
                    failed = self._take_features(obs, key, lambda: self._encode_frame(
                        self.backend, key, frame, torch.get_num_threads()))
                    if failed is not None:
                        return failed
                    continue
                self._handed[key] = time.monotonic()
                if self._staged:
                    self._encoding[key] = self._staged[key].start(frame)
                    self._begun[key] = self._t
                    continue
                if self._encoder is None:
                    self._encoder = ThreadPoolExecutor(1, thread_name_prefix="camera-encoder",
                                                       initializer=self._encoder_started)
                self._encoding[key] = self._encoder.submit(
                    self._encode_frame, self.backend, key, frame, torch.get_num_threads())
        if self._encoding:
            c.previous_frame_ticks += 1
        return None

    def _take_features(self, obs: dict, key: str, encoded) -> TickResult | None:
        """``encoded()`` gives (features, seconds) of ``key``'s frame: they become the ones
        the ticks use. None, or the safe result when it raised."""
        try:
            self._ready[key], seconds = encoded()
        except Exception as exc:  # noqa: BLE001 - reported: the safe command
            self.counters.inference_errors += 1
            self._forget_frames()
            self._discard()
            return self._safe_result(obs, "inference_error", f"{type(exc).__name__}: {exc}")
        self.encode_times.add(seconds)
        self.counters.frames_encoded += 1
        return None

    def _encoder_started(self) -> None:
        """On the encoder's thread, before its first frame."""
        self.encoder_thread_id = threading.get_native_id()
        self.encoder_priority = lower_this_thread(self._encoder_priority)

    def _submit(self, obs: dict) -> None:
        """Start computing a chunk on the worker from a copy of this tick's inputs."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="chunk-inference")
        if self._ahead:  # the newest features ready, as the head reads them
            images, features = {}, {key: self._ready[key] for key in self._cameras}
        else:
            images, features = self._frames_for_worker(obs), {}
        reset, self._reset_backend = self._reset_backend, False
        # torch's thread count is set per thread once it ran: the worker follows the caller's
        future = self._executor.submit(self._infer, self.backend, self._generation,
                                       self._low.copy(), images, features, reset,
                                       torch.get_num_threads())
        self._job = _Job(future, self._generation, self._p)

    def _infer(self, backend: Backend, generation: int, low: np.ndarray, images: dict,
               features: dict, reset: bool, threads: int):
        """On the worker: (chunk, seconds, [seconds per frame encoded]), or None for a chunk
        dropped before it started (a backend reset it carries is done all the same, in order
        with the inferences). ``images``: the new frames, encoded here; ``features``: each
        camera's, encoded ahead."""
        if reset:
            backend.reset()
        if generation != self._generation:
            return None
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        backend.low[...] = low
        t = time.perf_counter()
        encodings = []
        for key, img in images.items():
            backend.images[key][0] = img
            e = time.perf_counter()
            backend.encode(key)
            if backend.split:
                encodings.append(time.perf_counter() - e)
        for key, f in features.items():
            backend.features[key][...] = f
        chunk = backend.head()
        return chunk, time.perf_counter() - t, encodings

    def _periods(self, when: float | None) -> int:
        """The control periods begun since the last tick's: 1 without a time (each tick is
        a period), else counted from the states' times. A state at least ``PERIOD_SLACK`` of a
        period under a period after the one before (a driver at the control rate, jitter and
        all; a gap) counts them from the current period's start and begins the next one at its
        own time; states closer together (a driver faster than the control rate) begin one
        on the first at or after each period's start, on the grid of the periods (so that a
        driver at 30 Hz begins 20 periods a second at 20 Hz, not 15). The first state (of an
        episode) begins one; an older state than the one before (a clock put back) begins none,
        and the periods count from it."""
        if when is None:
            return 1
        start, last, rate = self._period_when, self._last_state, self._rate
        self._last_state = when
        if start is None:
            self._period_when = when
            return 1
        if when < last:
            self._period_when = when
            return 0
        elapsed = (when - start) * rate
        if (when - last) * rate >= 1.0 - PERIOD_SLACK:
            self._period_when = when
            return max(1, int(elapsed + PERIOD_SLACK))
        n = int(elapsed + TICK_SLACK)
        if n > 0:
            self._period_when = start + n / rate
        return n

    def tick(self, obs: dict, age: float | None = None, when: float | None = None
             ) -> TickResult:
        """One control tick on ``obs`` (``age``: its state's age, s; ``when``: its state's
        time, s, where each state is a tick of its own (trigger state)).

        A chunk's action i is for the control period i after the one its observation came in.
        Without ``when`` each tick is a period. With it, the periods are the states' times
        (``_periods``): a state of a period already begun (a driver faster than the control
        rate) is answered with that period's chunk action again (``first``: the first action
        of a prediction from this state, every state), through the filter, whose change counts
        the time since the last command (``_limit``: the periods' change is shared among their
        states); no chunk is computed for it. A state further than a period from the last
        passes the actions of the periods gone by (``ChunkScheduler.skip``); a chunk in flight
        (prefetch) starts at the index of the periods since its observation. States a period
        apart (lockstep) are the ticks without ``when``, exactly."""
        c = self.counters
        c.ticks += 1
        self._t += 1
        self._state_when = when
        periods = self._periods(when)
        self._p += periods
        if periods:
            self._target = None
        offered, self._offered = self._offered, None
        if offered is not None:
            self._install(*offered)
            c.swaps += 1
        if age is not None and self.max_age > 0 and age > self.max_age:
            c.stale += 1
            self._discard()
            return self._safe_result(obs, "stale")
        inference_s = 0.0
        low = self._low[0]
        for key, a, b in self._low_slices:
            low[a:b] = obs[key]
        if not np.isfinite(low).all():  # checked every tick, also while a chunk runs open loop
            c.nonfinite_inputs += 1
            self._discard()
            return TickResult(None, "nonfinite_input")
        if self._ahead:
            failed = self._watch_frames(obs)
            if failed is not None:
                return failed
        if self._target is not None and self.scheduler.mode != "first":
            c.same_period_ticks += 1   # (periods 0: the period's chunk action is given)
            return self._command(self._target, obs, 0.0)
        if periods > 1:
            self.scheduler.skip(periods - 1)
        if self.prefetch:
            if not self.scheduler.remaining:
                result, inference_s = self._take_chunk(obs)
                if result is not None:
                    return result
            if self._job is None and self.scheduler.remaining <= self.prefetch:
                self._submit(obs)
        elif self.scheduler.needs_prediction():
            t = time.perf_counter()
            if self._ahead:
                for key in self._cameras:
                    self.backend.features[key][...] = self._ready[key]
            else:
                self._encode_inline(obs)
            chunk = self.backend.head()
            inference_s = time.perf_counter() - t
            c.inferences += 1
            self.inference_times.add(inference_s)
            if not np.isfinite(chunk).all():
                c.nonfinite_outputs += 1
                self.scheduler.reset()
                return TickResult(None, "nonfinite_output", inference_s=inference_s)
            self.scheduler.add(chunk)
            c.chunks += 1
        self._target = self.scheduler.next()
        return self._command(self._target, obs, inference_s)

    def _command(self, target: np.ndarray, obs: dict, inference_s: float) -> TickResult:
        """The tick's command: ``target`` through the filter."""
        c = self.counters
        action, clamped = self._limit(target, obs)
        if clamped:
            c.clamped_ticks += 1
            c.clamped_values += clamped
        self.last_command = action
        self._when = self._state_when
        c.commands += 1
        return TickResult(action, "ok", clamped, inference_s)

    def _take_chunk(self, obs: dict) -> tuple[TickResult | None, float]:
        """The current chunk ran out (prefetch): put the one in flight into execution (None,
        its inference seconds), or (the result of this tick without a chunk's action, 0)."""
        c = self.counters
        fresh = self._job is None
        if fresh:  # nothing in flight (a new episode): computed now
            self._submit(obs)
        job = self._job
        if not job.future.done():
            if self.late_chunk == "hold":
                c.no_action_ticks += 1
                return self._safe_result(obs, "late"), 0.0
            c.waited_ticks += int(not fresh)  # (a first chunk is waited for by design)
            wait_for([job.future])
        self._job = None
        try:
            out = job.future.result()
        except Exception as exc:  # noqa: BLE001 - reported, the tick gives the safe command
            c.inference_errors += 1
            return self._safe_result(obs, "inference_error", f"{type(exc).__name__}: {exc}"), 0.0
        chunk, seconds, encodings = out  # (a job of another generation is never self._job)
        for e in encodings:
            self.encode_times.add(e)
        c.frames_encoded += len(encodings)
        c.inferences += 1
        self.inference_times.add(seconds)
        if not np.isfinite(chunk).all():
            c.nonfinite_outputs += 1
            return TickResult(None, "nonfinite_output", inference_s=seconds), seconds
        skip = self._p - job.tick   # the periods since its observation: their actions are past
        if skip >= self.scheduler.execute:  # all past (hold): a new one from now
            c.discarded_chunks += 1
            c.no_action_ticks += 1
            self._submit(obs)
            return self._safe_result(obs, "late"), 0.0
        self.scheduler.add(chunk, skip)
        c.chunks += 1
        return None, seconds


def make_controller(loaded: LoadedPolicy, spec: Spec | None = None, *, robot: str = "",
                    lower=None, upper=None, max_delta=None, allow_unlimited: bool = False,
                    chunk_mode: str = "auto", ensemble_decay: float = 0.01,
                    chunk_execute: int = 0, max_age: float = 0.0, safe_command: str = "hold",
                    prefetch: int = 0, late_chunk: str = "wait", camera_encoding: str = "inline",
                    encoder_priority: str = "idle", max_frame_lag: float = 0.0
                    ) -> tuple[PolicyController, ActionLimits | None]:
    """The controller the policy node runs for ``loaded`` on ``spec`` (default: the
    checkpoint's), under the action limits ``runtime_limits`` gives (the checkpoint's, replaced
    in part or whole by ``robot``/``lower``/``upper``/``max_delta``), executing chunks as
    ``chunking`` resolves ``chunk_mode`` (default: the policy family's own). Every world that
    runs a policy (the node, the gymnasium rollouts) builds its controller here, so that they
    command alike. Returns (controller, limits); raises ``LimitsError`` as ``runtime_limits``
    does, ``ValueError`` for chunk settings that cannot run the policy."""
    spec = spec or loaded.spec
    limits = runtime_limits(spec, loaded.meta.get("action_limits"), robot, lower, upper,
                            max_delta, allow_unlimited)
    controller = PolicyController(spec, loaded, ActionFilter.from_limits(limits, spec.action_dim),
                                  chunk_mode, ensemble_decay, chunk_execute, max_age,
                                  safe_command, prefetch, late_chunk, camera_encoding,
                                  encoder_priority, max_frame_lag)
    return controller, limits
