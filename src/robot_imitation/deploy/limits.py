"""The limits every command of a policy is held to: per action value, a lower and an upper bound
and a largest change per control tick.

They are known when a policy is trained (the robot the data came from) and travel in its
checkpoint (``policy.json``, ``action_limits``), so a policy node applies them however it is
started. Where they come from, in order:

1. ``robot``: a robot config (``config/robots`` name or YAML path): the arm joints' position
   limits, the gripper's 0..1 opening, and the joints' velocity limits times one control period.
2. The task's robot, for data recorded on a built-in task.
3. The recorded actions themselves: their range widened by ``DATA_MARGIN`` of itself, and
   ``DATA_DELTA_FACTOR`` times the largest change between two steps of an episode. A robot the
   package does not know still gets a bound that the demonstrations never needed to exceed.

At run time, the policy node's parameters may replace them (``robot``, ``action_lower``,
``action_upper``, ``max_delta``); running without any limit is an explicit, logged choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATA_MARGIN = 0.1        # data limits: the recorded range widened by this share of itself
DATA_DELTA_FACTOR = 1.5  # data limits: the largest recorded change per step times this


class LimitsError(ValueError):
    """Limits that cannot be used (names the value and what is wrong)."""


class RobotMismatch(LimitsError):
    """A robot whose arm and gripper are not the spec's action values."""


@dataclass(frozen=True)
class ActionLimits:
    lower: np.ndarray       # (A,), -inf where unbounded
    upper: np.ndarray       # (A,), +inf where unbounded
    max_delta: np.ndarray   # (A,), +inf where the change per tick is unlimited
    source: str             # where they come from, for logs ("robot panda", "data", ...)

    def to_dict(self) -> dict:
        """JSON: unbounded values as null."""
        def values(a):
            return [float(x) if np.isfinite(x) else None for x in a]

        return {"lower": values(self.lower), "upper": values(self.upper),
                "max_delta": values(self.max_delta), "source": self.source}

    @classmethod
    def from_dict(cls, data: dict, dim: int, where: str = "action_limits") -> "ActionLimits":
        if not isinstance(data, dict) or not {"lower", "upper", "max_delta"} <= set(data):
            raise LimitsError(f"{where}: needs lower, upper and max_delta")

        def vec(name, fill):
            v = data[name]
            if not isinstance(v, list) or len(v) != dim:
                raise LimitsError(f"{where}: {name} needs {dim} values (one per action value), "
                                  f"got {v!r}")
            try:
                return np.array([fill if x is None else float(x) for x in v], dtype=np.float64)
            except (TypeError, ValueError):
                raise LimitsError(f"{where}: {name} holds a value that is not a number: "
                                  f"{v!r}") from None

        return cls.build(vec("lower", -np.inf), vec("upper", np.inf), vec("max_delta", np.inf),
                         str(data.get("source", "checkpoint")), where)

    @classmethod
    def build(cls, lower, upper, max_delta, source: str, where: str = "limits") -> "ActionLimits":
        lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        delta = np.asarray(max_delta, np.float64)
        for name, v in (("lower", lower), ("upper", upper), ("max_delta", delta)):
            if np.isnan(v).any():
                i = int(np.flatnonzero(np.isnan(v))[0])
                raise LimitsError(f"{where}: {name} is NaN for action value {i}")
        negative = np.flatnonzero(delta < 0)
        if negative.size:  # checked before 0 becomes "no limit": a negative one is no limit
            i = int(negative[0])
            raise LimitsError(f"{where}: max_delta {delta[i]:g} for action value {i} is "
                              "negative (the largest change per tick; 0: no limit)")
        delta = np.where(delta > 0, delta, np.inf)  # 0: no limit (as the node parameter says)
        bad = np.flatnonzero(lower > upper)
        if bad.size:
            i = int(bad[0])
            raise LimitsError(f"{where}: lower limit {lower[i]:g} above upper limit "
                              f"{upper[i]:g} for action value {i}")
        return cls(lower, upper, delta, source)

    @property
    def unlimited(self) -> bool:
        return bool(np.all(np.isinf(self.lower)) and np.all(np.isinf(self.upper))
                    and np.all(np.isinf(self.max_delta)))

    def describe(self, names: list | None = None) -> str:
        """One line for logs: the bounds and the change per tick of each value."""
        names = names or [f"[{i}]" for i in range(len(self.lower))]
        parts = [f"{n} {lo:.3g}..{hi:.3g} (d {d:.3g})"
                 for n, lo, hi, d in zip(names, self.lower, self.upper, self.max_delta)]
        return f"{self.source}: " + ", ".join(parts)


class ActionFilter:
    """The one filter commands pass (the policy node's, safe ones included, the command mux's,
    the teleops' joint targets): clamp each action value to [lower, upper], and its change per
    tick to ``max_delta`` (inf where unlimited)."""

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
        self._any_rate = bool(self.rate_limited.any())
        self._bounded = bool(np.isfinite(self.lower).any() or np.isfinite(self.upper).any())
        self.jumps = 0  # calls whose bounds undid the change limit (``previous`` outside them)
        self.outside = (np.zeros(0, int), None)  # the last such call: (indices, previous)

    def describe_outside(self) -> str:
        """The values of the last ``previous`` that lay outside the bounds (``jumps``)."""
        index, previous = self.outside
        return ", ".join(f"value {i} at {previous[i]:.4g}, limits {self.lower[i]:.4g}.."
                         f"{self.upper[i]:.4g}" for i in index) or "none"

    @classmethod
    def from_limits(cls, limits: ActionLimits | None, dim: int) -> "ActionFilter":
        """The filter of ``limits`` (None: no limit at all, an explicit choice)."""
        if limits is None:
            return cls(dim)
        return cls(dim, limits.lower, limits.upper, limits.max_delta)

    def __call__(self, action: np.ndarray, previous: np.ndarray | None,
                 ticks: float = 1.0) -> tuple[np.ndarray, int]:
        """(the filtered action, a new array; how many of its values were changed): its change
        from ``previous`` limited to ``max_delta``, then clamped to [lower, upper] (``np.clip``'s
        arithmetic, maximum then minimum, done only where a bound exists). The bounds hold
        whatever ``previous`` is: a command is never outside them. From a ``previous`` outside
        the bounds (the measured joints of a robot standing outside limits narrowed below it,
        the last command before a checkpoint of narrower limits) the command is the bound, a
        change larger than ``max_delta``: counted (``jumps``: the calls that did so), for the
        node to say. ``ticks``: the control ticks since ``previous`` (0..1; 1, a whole tick, is
        ``max_delta`` itself): the change allowed is ``max_delta`` times it, a velocity bound
        for commands that come faster than the control rate."""
        out = None
        if previous is not None and self._any_rate:
            delta = self.max_delta if ticks >= 1.0 else \
                np.where(self.rate_limited, self.max_delta * max(ticks, 0.0), np.inf)
            out = np.maximum(action, previous - delta)
            np.minimum(out, previous + delta, out=out)
            if self._bounded and ((previous < self.lower) | (previous > self.upper)).any():
                # (only then can the clamp below undo the change limit)
                limited = np.minimum(np.maximum(out, self.lower), self.upper)
                if (np.abs(limited - previous) > delta * (1 + 1e-9)).any():
                    self.jumps += 1
                    self.outside = np.flatnonzero((previous < self.lower)
                                                  | (previous > self.upper)), previous.copy()
        if self._bounded:
            out = np.maximum(action if out is None else out, self.lower)
            np.minimum(out, self.upper, out=out)
        if out is None:  # nothing bounds it (allow_unlimited)
            return np.array(action, dtype=np.float64), 0
        return out, int(np.count_nonzero(out != action))


def robot_limits(robot: str, spec) -> ActionLimits:
    """The limits of [arm joints..., gripper] for a robot config (name or YAML path)."""
    from ..sim.robot import RobotConfig, RobotIndex, load_robot_spec

    try:
        cfg = RobotConfig.load(robot)
    except FileNotFoundError as exc:
        raise LimitsError(str(exc)) from None
    index = RobotIndex.build(load_robot_spec(cfg).compile(), cfg)
    n = index.n_arm
    if spec.action_dim != n + 1:
        raise RobotMismatch(f"robot '{robot}' limits cover {n} arm joints and a gripper, but spec "
                          f"'{spec.name}' has {spec.action_dim} action values: give "
                          "action_lower, action_upper and max_delta instead")
    return index_limits(index, spec.control_rate, cfg.name)


def index_limits(index, control_rate: float, name: str) -> ActionLimits:
    """The limits of [arm joints..., gripper] of a built robot (``sim.robot.RobotIndex``) at
    ``control_rate`` ticks a second."""
    lower = np.append(index.arm_limits[:, 0], 0.0)
    upper = np.append(index.arm_limits[:, 1], 1.0)
    delta = np.append(index.velocity_limits / control_rate, np.inf)
    return ActionLimits.build(lower, upper, delta, f"robot {name}")


def data_limits(actions: np.ndarray, episode: np.ndarray) -> ActionLimits:
    """Limits from recorded actions (T, A) and each step's episode number (T,)."""
    actions = np.asarray(actions, np.float64)
    if actions.ndim != 2 or len(actions) == 0:
        raise LimitsError("no recorded actions to take limits from")
    lo, hi = actions.min(axis=0), actions.max(axis=0)
    margin = DATA_MARGIN * np.maximum(hi - lo, 1e-6)
    same = np.asarray(episode)[1:] == np.asarray(episode)[:-1]
    steps = np.abs(np.diff(actions, axis=0))[same]
    delta = (DATA_DELTA_FACTOR * steps.max(axis=0) if len(steps) else np.full(len(lo), np.inf))
    delta = np.where(delta > 0, delta, np.inf)  # a value that never changed: no rate limit
    return ActionLimits.build(lo - margin, hi + margin, delta, "data (recorded range)")


def training_limits(spec, arrays: dict, robot: str = "", task: str | None = None
                    ) -> ActionLimits:
    """The limits a checkpoint carries (see the module docstring for the order)."""
    if robot:
        return robot_limits(robot, spec)
    if task:
        from ..sim.tasks import TaskConfig

        try:
            return robot_limits(TaskConfig.load(task).robot, spec)
        except LimitsError:
            pass  # the task's robot does not fit this spec's actions: use the data
    return data_limits(arrays["actions"], arrays["episode"])


def runtime_limits(spec, stored: dict | None, robot: str = "", lower=None, upper=None,
                   max_delta=None, allow_unlimited: bool = False) -> ActionLimits | None:
    """The limits a policy node applies: ``robot`` or the checkpoint's (``stored``), with any of
    ``lower``/``upper``/``max_delta`` given (1 or action_dim values) replacing that part.

    None only with ``allow_unlimited`` and nothing given; without it, a checkpoint that carries
    no limits (trained before they were stored) and no parameter is an error."""
    dim = spec.action_dim
    base = None
    if robot:
        base = robot_limits(robot, spec)
    elif stored is not None:
        base = ActionLimits.from_dict(stored, dim, "checkpoint action_limits")
    given = {k: v for k, v in (("action_lower", lower), ("action_upper", upper),
                               ("max_delta", max_delta)) if v is not None and len(v)}
    if base is None and not given:
        if allow_unlimited:
            return None
        raise LimitsError("no action limits: the checkpoint carries none (trained before "
                          "checkpoints stored them) and none were given; set `robot`, or "
                          "action_lower/action_upper/max_delta, or allow_unlimited:=true to "
                          "command without limits")

    def vec(name, fill):
        v = np.atleast_1d(np.asarray(given[name], np.float64))
        if v.size == 1:
            v = np.full(dim, float(v[0]))
        if v.shape != (dim,):
            raise LimitsError(f"{name} needs 1 or {dim} values (one per action value), got "
                              f"{v.size}")
        bad = np.flatnonzero(np.isnan(v) | (v < 0 if name == "max_delta" else False))
        if bad.size:
            i = int(bad[0])
            raise LimitsError(f"{name} {v[i]:g} for action value {i}: "
                              + ("not a number" if np.isnan(v[i]) else
                                 "negative (the largest change per tick; 0: no limit)"))
        return v

    lo = vec("action_lower", -np.inf) if "action_lower" in given else \
        (base.lower if base else np.full(dim, -np.inf))
    hi = vec("action_upper", np.inf) if "action_upper" in given else \
        (base.upper if base else np.full(dim, np.inf))
    d = vec("max_delta", np.inf) if "max_delta" in given else \
        (base.max_delta if base else np.full(dim, np.inf))
    source = (base.source if base else "parameters") + \
        ("" if not given or base is None else f", {'/'.join(given)} from parameters")
    limits = ActionLimits.build(lo, hi, d, source)
    if limits.unlimited and not allow_unlimited:
        raise LimitsError(f"the action limits given ({'/'.join(given)}) bound nothing: no "
                          "bound and no change per tick on any action value; give finite "
                          "limits, or allow_unlimited:=true to command without limits")
    return limits


# a time step within this share of a control tick of a whole one is a whole one (the rounding
# of stamps in seconds: a lockstep state a control period after the last is one tick)
TICK_SLACK = 1e-3


class CommandLimiter:
    """The one filter (``ActionFilter``) for a node whose commands no
    ``PolicyController`` computed (the command mux forwarding whichever source drives), over
    the spec's action parts as they travel (one message per command topic: arm, gripper).

    Each part's change per tick counts from its last command; after ``reset`` (a new episode:
    a simulated robot is put back), from the measured values a relative action part is relative
    to (the arm joints), as the policy node's first command. A part with a change limit and no
    such reference (``unreferenced``) is only clamped to its bounds by ``part``: a node that
    forwards to a robot asks ``unreferenced`` first and does not forward it (the command mux).

    ``now`` (seconds, any clock): the time of a command. With it, the change allowed counts
    the control ticks of the spec's ``control_rate`` since the part's last command, at most one
    tick: commands that come faster than the control rate (a burst, a source at 100 Hz) share
    one tick's change between them, so the commanded values move no faster than ``max_delta``
    per control period (a velocity bound). Without it, one tick per command (lockstep: one
    command per state)."""

    TICK_SLACK = TICK_SLACK

    def __init__(self, limits: ActionLimits | None, spec):
        self.parts = []   # (start, end) in the action vector, per action field
        start = 0
        for f in spec.actions:
            self.parts.append((start, start + f.size))
            start += f.size
        self.relative = [f.relative_to for f in spec.actions]
        self.rate = float(spec.control_rate)
        self.filters = [ActionFilter(b - a) if limits is None else
                        ActionFilter(b - a, limits.lower[a:b], limits.upper[a:b],
                                     limits.max_delta[a:b]) for a, b in self.parts]
        self.last: list = [None] * len(self.parts)
        self.when: list = [None] * len(self.parts)  # ``now`` of each part's last command
        self.clamped_commands = 0   # part commands with a value changed by the filter
        self.clamped_values = 0

    def reset(self) -> None:
        self.last = [None] * len(self.parts)
        self.when = [None] * len(self.parts)

    def rate_limited(self, i: int) -> bool:
        """Does part ``i`` have a change limit (a value with a finite ``max_delta``)?"""
        return bool(self.filters[i].rate_limited.any())

    def reference(self, i: int, size: int, measured: dict | None = None):
        """What part ``i``'s next change counts from: its last command, else (after a reset)
        the measured values it is relative to (``measured``: the observations by key), else
        None."""
        if self.last[i] is not None:
            return self.last[i]
        key = self.relative[i]
        if key and measured is not None and key in measured:
            m = np.asarray(measured[key], dtype=np.float64)[:size]
            if m.shape == (size,):
                return m
        return None

    def unreferenced(self, i: int, measured: dict | None = None) -> bool:
        """Would part ``i``'s next command skip its change limit on some value, having nothing
        to count it from (no command since the reset, no measured value, or one not finite)?"""
        a, b = self.parts[i]
        if not self.rate_limited(i):
            return False
        reference = self.reference(i, b - a, measured)
        return reference is None or \
            not np.isfinite(reference[self.filters[i].rate_limited]).all()

    def ticks(self, i: int, now: float | None) -> float:
        """Control ticks since part ``i``'s last command (at most 1; 1 without a time)."""
        if now is None or self.when[i] is None or self.last[i] is None:
            return 1.0
        ticks = (now - self.when[i]) * self.rate
        return 1.0 if ticks >= 1.0 - self.TICK_SLACK else max(ticks, 0.0)

    def part(self, i: int, values, measured: dict | None = None,
             now: float | None = None) -> np.ndarray:
        """Part ``i``'s command ``values`` (its size; finite) through the filter, a new array.
        ``measured``: the observations by key (a relative part's reference after a reset);
        ``now``: the command's time (s), for the change allowed since the last (see the
        class)."""
        values = np.asarray(values, dtype=np.float64)
        reference = self.reference(i, len(values), measured)
        f = self.filters[i]
        if reference is not None and self.last[i] is None:  # unknown: no change limit there
            reference = np.where(np.isfinite(reference), reference,
                                 np.minimum(np.maximum(values, f.lower), f.upper))
        out, clamped = f(values, reference, self.ticks(i, now))
        if clamped:
            self.clamped_commands += 1
            self.clamped_values += clamped
        self.last[i] = out
        if now is not None:
            # (a clock that went back, a simulation put back: a new time base from here)
            self.when[i] = now
        return out

    def __call__(self, action, measured: dict | None = None,
                 now: float | None = None) -> np.ndarray:
        """The whole action vector (every part at once), through the filter."""
        action = np.asarray(action, dtype=np.float64)
        return np.concatenate([self.part(i, action[a:b], measured, now)
                               for i, (a, b) in enumerate(self.parts)])


def command_limits(spec, robot: str, lower=None, upper=None, max_delta=None,
                   allow_unlimited: bool = False) -> ActionLimits | None:
    """The limits a node applies to commands that come from no checkpoint: ``robot``'s, with
    any of ``lower``/``upper``/``max_delta`` given replacing that part (``runtime_limits``)."""
    given = any(v is not None and len(v) for v in (lower, upper, max_delta))
    try:
        stored = robot_limits(robot, spec).to_dict() if robot else None
    except RobotMismatch:
        if not given:  # (it says to give action_lower, action_upper and max_delta)
            raise
        stored = None  # a robot that does not fit the spec: the limits given alone
    return runtime_limits(spec, stored, "", lower, upper, max_delta, allow_unlimited)
