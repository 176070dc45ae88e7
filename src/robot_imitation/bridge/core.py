"""Robot-controller behaviour over a ``TaskSim``: command validation, interfaces, timeouts.

This is everything the bridge node does except talking ROS: the node turns messages into calls
on ``BridgeCore`` and ``BridgeCore``'s state into messages. All times are simulation seconds on
a clock that is monotonic across episode resets (``clock``).
"""
from __future__ import annotations

import bisect
import enum
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..sim.tasks import TaskSim


class CommandResult(enum.Enum):
    ACCEPTED = "accepted"
    CLAMPED = "clamped"
    WRONG_LENGTH = "wrong_length"
    NOT_FINITE = "not_finite"
    UNKNOWN_JOINTS = "unknown_joints"
    BAD_TRAJECTORY = "bad_trajectory"
    # A stamped trajectory whose last point is not after the bridge's clock: nothing to run.
    TRAJECTORY_IN_PAST = "trajectory_in_past"
    # A stamped trajectory starting implausibly far ahead of the bridge's clock (typically a
    # wall-clock stamp while the bridge runs on simulation time, which starts near 0).
    START_TOO_FAR_AHEAD = "start_too_far_ahead"
    # Bytes that are no command message (a raw subscription's, that neither the CDR reader nor
    # rclpy can read): dropped, counted, logged.
    MALFORMED = "malformed"

    @property
    def ok(self) -> bool:
        return self in (CommandResult.ACCEPTED, CommandResult.CLAMPED)


@dataclass
class CommandCounters:
    accepted: int = 0
    clamped: int = 0
    rejected: dict = field(default_factory=dict)  # reason -> count
    timeouts: int = 0
    late_trajectories: int = 0  # accepted stamped trajectories whose first points were past
    # real time: commands naming a state before the episode's start, dropped (``earlier_episode``)
    earlier_episode: int = 0

    def count(self, result: CommandResult) -> None:
        if result is CommandResult.ACCEPTED:
            self.accepted += 1
        elif result is CommandResult.CLAMPED:
            self.accepted += 1
            self.clamped += 1
        else:
            self.rejected[result.value] = self.rejected.get(result.value, 0) + 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class BurstLog:
    """Log a flood of bad commands in a bounded number of lines.

    A burst is a run of notes (bad commands of any kind and reason, good commands in between
    or not) with no quiet time of ``gap`` seconds. Its first note is logged; the others are
    counted per key; when the burst ends, one summary gives the counts per key (when there
    was more than the first note). A burst ends when ``flush`` (call it periodically) or the
    next note finds it quiet for ``gap``, or once it has lasted ``span`` seconds (so a flood
    that never stops is still reported every ``span`` seconds), or at ``end``. Each burst
    lasts at least ``min(gap, span)``, so the log gets at most two lines per that time,
    whatever the rate and the mix of reasons.

    ``log`` takes one line; ``clock`` gives seconds (monotonic), replaceable in tests.
    """

    def __init__(self, log, noun: str, gap: float = 1.0, span: float = 10.0,
                 clock=time.monotonic):
        self.log, self.noun, self.gap, self.span, self.clock = log, noun, gap, span, clock
        self.counts: dict = {}  # key -> notes in the burst in progress
        self.started = self.last = 0.0
        self._lock = threading.Lock()  # notes come from callbacks, flush/end from elsewhere

    def note(self, key: str, line: str) -> None:
        """A bad command counted under ``key``; ``line`` is logged if it starts a burst."""
        with self._lock:
            now = self.clock()
            if self.counts and (now - self.last > self.gap or now - self.started >= self.span):
                self._end(now)
            if not self.counts:
                self.started = now
                self.log(f"{line} (further {self.noun} less than {self.gap:g} s apart are "
                         "counted, not logged)")
            self.counts[key] = self.counts.get(key, 0) + 1
            self.last = now

    def flush(self) -> None:
        """End the burst in progress if it has been quiet for ``gap`` or lasted ``span``."""
        with self._lock:
            now = self.clock()
            if self.counts and (now - self.last > self.gap or now - self.started >= self.span):
                self._end(now)

    def end(self) -> None:
        """End the burst in progress now (summarise it)."""
        with self._lock:
            self._end(self.clock())

    def _end(self, now: float) -> None:
        total = sum(self.counts.values())
        if total > 1:
            parts = ", ".join(f"{key} {n}" for key, n in sorted(self.counts.items()))
            self.log(f"{total} {self.noun} in the last burst "
                     f"({min(now, self.last) - self.started:.1f} s): {parts}")
        self.counts = {}


@dataclass
class EpisodeStatus:
    episode: int
    seed: int | None
    tick: int
    success: bool
    done: bool
    reward: float

    @property
    def outcome(self) -> str:
        if self.success:
            return "success"
        return "timeout" if self.done else "running"


class _Trajectory:
    """Piecewise-linear joint positions over absolute (clock) times."""

    def __init__(self, times: np.ndarray, positions: np.ndarray):
        self.times, self.positions = times, positions

    def sample(self, t: float) -> np.ndarray:
        i = bisect.bisect_right(self.times, t)
        if i == 0:
            return self.positions[0]
        if i >= len(self.times):
            return self.positions[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return (1 - w) * self.positions[i - 1] + w * self.positions[i]

    def finished(self, t: float) -> bool:
        return t >= self.times[-1]


class BridgeCore:
    """Controllers in front of a ``TaskSim``: what a real robot's command interfaces would do.

    - ``interface="position"``: arm commands are joint positions, clamped to the joint limits.
    - ``interface="velocity"``: arm commands are joint velocities, clamped to the velocity
      limits and integrated into the position servo's target every physics step.
    - Trajectories (``trajectory_msgs/JointTrajectory`` semantics) are interpolated linearly,
      their header stamp treated as joint_trajectory_controller does (see
      ``command_trajectory``).
    - Commands that are the wrong length, not finite, or name unknown joints are rejected.
    - With ``command_timeout > 0``, no accepted command for that long holds the arm where it is
      (for a trajectory: counted from its last point).
    """

    # A trajectory stamped to start more than this many seconds after the bridge's clock is
    # rejected: no planner schedules that far ahead, but a wall-clock stamp (some 1.7e9 s)
    # sent to a bridge on simulation time (which starts near 0) would otherwise wait forever.
    MAX_START_AHEAD = 60.0

    def __init__(self, sim: TaskSim, interface: str = "position", command_timeout: float = 0.5,
                 max_start_ahead: float = MAX_START_AHEAD):
        if interface not in ("position", "velocity"):
            raise ValueError(f"command interface must be 'position' or 'velocity', not {interface!r}")
        self.sim = sim
        self.interface = interface
        self.command_timeout = float(command_timeout)
        self.max_start_ahead = float(max_start_ahead)
        # Why the last trajectory was rejected for its timing, or started late (one line with
        # the times involved, for the log); "" otherwise.
        self.detail = ""
        r = sim.robot
        self.n_arm = r.n_arm
        self.low, self.high = r.arm_limits[:, 0], r.arm_limits[:, 1]
        self.vlim = r.velocity_limits
        self.counters = CommandCounters()
        self.episode = -1
        self.tick = 0
        self.episode_start = 0
        self._clock_offset = 0.0
        self._target = np.zeros(self.n_arm)
        self._velocity = np.zeros(self.n_arm)
        self._gripper = float(sim.cfg.gripper_init)
        self._trajectory: _Trajectory | None = None
        self._last_command = 0.0
        self._holding = False
        self._success = False

    # ----------------------------------------------------------------- time
    @property
    def clock(self) -> float:
        """Simulation time since the bridge started, monotonic across resets."""
        return self._clock_offset + self.sim.time

    # ----------------------------------------------------------------- episodes
    def reset(self, seed: int | None) -> None:
        self._clock_offset = self.clock + self.sim.model.opt.timestep  # strictly increasing stamps
        self.sim.reset(seed)
        self.episode += 1
        self.tick = 0
        # the stamp (ns) of the episode's first state: a command naming an earlier one answers
        # the episode before (``earlier_episode``)
        self.episode_start = int(round(self.clock * 1e9))
        self._target = self.sim.data.qpos[self.sim.robot.arm_qpos].copy()
        self._velocity[:] = 0.0
        self._gripper = float(self.sim.cfg.gripper_init)
        self._trajectory = None
        self._last_command = self.clock
        self._holding = False
        self._success = False

    def status(self) -> EpisodeStatus:
        success = self._success
        done = success or self.tick >= self.sim.cfg.max_steps
        return EpisodeStatus(self.episode, self.sim.seed, self.tick, success, done, self.sim.reward())

    # ----------------------------------------------------------------- commands
    def command_arm(self, values) -> CommandResult:
        """A ``Float64MultiArray`` for the arm controller (positions or velocities)."""
        v = np.asarray(values, dtype=float)
        if v.shape != (self.n_arm,):
            return self._counted(CommandResult.WRONG_LENGTH)
        if not np.all(np.isfinite(v)):
            return self._counted(CommandResult.NOT_FINITE)
        if self.interface == "position":
            c = np.clip(v, self.low, self.high)
            self._target = c
        else:
            c = np.clip(v, -self.vlim, self.vlim)
            self._velocity = c
        self._trajectory = None
        return self._accepted(not np.array_equal(c, v))

    def command_gripper(self, values) -> CommandResult:
        """Gripper opening fraction: 0 closed .. 1 open (one value)."""
        v = np.asarray(values, dtype=float).reshape(-1)
        if v.shape != (1,):
            return self._counted(CommandResult.WRONG_LENGTH)
        if not math.isfinite(v[0]):
            return self._counted(CommandResult.NOT_FINITE)
        self._gripper = float(np.clip(v[0], 0.0, 1.0))
        result = CommandResult.CLAMPED if self._gripper != v[0] else CommandResult.ACCEPTED
        self.counters.count(result)
        return result

    def command_trajectory(self, joint_names, times_from_start, positions,
                           start: float | None = None) -> CommandResult:
        """A joint trajectory: names, times (s from ``start``), one position row per point.

        ``start`` is a clock time (the message's header stamp); ``None`` or 0 means now. As
        joint_trajectory_controller does: a stamped trajectory that ends at or before now is
        rejected (``TRAJECTORY_IN_PAST``); points already past are skipped and the arm moves
        from its current target to the first point still ahead (never jumping along the
        skipped part); a start more than ``max_start_ahead`` seconds ahead is rejected
        (``START_TOO_FAR_AHEAD``: a wall-clock stamp under simulation time, most likely).
        ``detail`` then says why, with the times.
        """
        self.detail = ""
        names = list(joint_names)
        arm = self.sim.robot.arm_joint_names
        if sorted(names) != sorted(arm):
            return self._counted(CommandResult.UNKNOWN_JOINTS)
        pos = np.asarray(positions, dtype=float)
        times = np.asarray(times_from_start, dtype=float)
        if pos.ndim != 2 or pos.shape != (len(times), len(names)) or len(times) == 0:
            return self._counted(CommandResult.WRONG_LENGTH)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(times))):
            return self._counted(CommandResult.NOT_FINITE)
        if np.any(np.diff(times) < 0) or times[0] < 0:
            return self._counted(CommandResult.BAD_TRAJECTORY)
        order = [names.index(n) for n in arm]
        pos = pos[:, order]
        now = self.clock
        if start:
            t0 = float(start)
            due = t0 + times
            if t0 - now > self.max_start_ahead:
                self.detail = (
                    f"trajectory stamped {t0:.3f} s starts {t0 - now:.3f} s after the bridge's "
                    f"clock ({now:.3f} s), more than {self.max_start_ahead:g} s ahead: a "
                    "wall-clock stamp while the bridge runs on simulation time? Stamp it 0 "
                    "(start now) or from the bridge's /clock (use_sim_time: true)")
                return self._counted(CommandResult.START_TOO_FAR_AHEAD)
            if due[-1] <= now:
                self.detail = (
                    f"trajectory stamped {t0:.3f} s ends at {due[-1]:.3f} s, not after the "
                    f"bridge's clock ({now:.3f} s): nothing left to run (a stamp from an old "
                    "state, or from a clock behind the bridge's /clock? Stamp 0 starts now)")
                return self._counted(CommandResult.TRAJECTORY_IN_PAST)
            ahead = due > now
            if not ahead.all():
                skipped = int((~ahead).sum())
                self.detail = (
                    f"trajectory stamped {t0:.3f} s started late: {skipped} of its {len(due)} "
                    f"points were due before the bridge's clock ({now:.3f} s) and are skipped; "
                    f"the arm moves from its current target to the next point (due at "
                    f"{due[ahead][0]:.3f} s)")
                self.counters.late_trajectories += 1
            due, pos = due[ahead], pos[ahead]
        else:
            due = now + times
        clamped = np.clip(pos, self.low, self.high)
        # Start from where the arm is being held now, as joint_trajectory_controller does.
        now_q = self._target.copy()
        self._trajectory = _Trajectory(np.concatenate([[now], due]), np.vstack([now_q, clamped]))
        self._velocity[:] = 0.0
        return self._accepted(not np.array_equal(clamped, pos))

    def malformed(self) -> CommandResult:
        """A command message that could not be read at all: counted, nothing applied."""
        return self._counted(CommandResult.MALFORMED)

    def earlier_episode(self, stamp: int | None) -> bool:
        """Does a command naming the state ``stamp`` (ns; None: it names none) answer a state
        before the episode's start? An answer to the episode before a reset, still on its way
        (real time; in lockstep the stepper drops it as late): the robot was put back since, and
        its pose would be a jump. Counted; the command is not applied."""
        if stamp is None or stamp >= self.episode_start:
            return False
        self.counters.earlier_episode += 1
        return True

    def _counted(self, result: CommandResult) -> CommandResult:
        self.counters.count(result)
        return result

    def _accepted(self, clamped: bool) -> CommandResult:
        self._last_command = self.clock
        self._holding = False
        return self._counted(CommandResult.CLAMPED if clamped else CommandResult.ACCEPTED)

    # ----------------------------------------------------------------- stepping
    def _update_targets(self, dt: float) -> None:
        now = self.clock
        # A trajectory in progress is a command until its last point; the timeout counts from
        # there (a trajectory longer than the timeout runs to its end).
        if (self.command_timeout > 0 and not self._holding and self._trajectory is None
                and now - self._last_command > self.command_timeout):
            # Timeout: hold the arm where it is (stop any motion in progress).
            self._target = self.sim.data.qpos[self.sim.robot.arm_qpos].copy()
            self._velocity[:] = 0.0
            self._trajectory = None
            self._holding = True
            self.counters.timeouts += 1
        if self._trajectory is not None:
            self._target = self._trajectory.sample(now)
            if self._trajectory.finished(now):
                self._trajectory = None
                self._last_command = now
        elif self.interface == "velocity" and not self._holding:
            self._target = np.clip(self._target + self._velocity * dt, self.low, self.high)

    @property
    def holding(self) -> bool:
        return self._holding

    def step_physics(self, n: int = 1) -> None:
        """Advance the physics ``n`` steps, updating the controller targets every step."""
        dt = self.sim.model.opt.timestep
        for _ in range(n):
            self._update_targets(dt)
            self.sim.set_action(np.append(self._target, self._gripper))
            self.sim.step_physics(1)

    def step_tick(self) -> EpisodeStatus:
        """One control tick (the task's control period); returns the episode status after it."""
        if self._trajectory is None and self.interface == "position":
            # Fast path: targets are constant over the tick unless the timeout fires inside it.
            dt = self.sim.model.opt.timestep
            remaining = self.command_timeout - (self.clock - self._last_command)
            if self.command_timeout <= 0 or self._holding or remaining > self.sim.substeps * dt:
                self.sim.set_action(np.append(self._target, self._gripper))
                self.sim.step_physics(self.sim.substeps)
            else:
                self.step_physics(self.sim.substeps)
        else:
            self.step_physics(self.sim.substeps)
        self.tick += 1
        self._success = self._success or self.sim.success()
        return self.status()

    def note_tick(self) -> EpisodeStatus:
        """Count a control tick whose physics ran through ``step_physics`` (real-time mode)."""
        self.tick += 1
        self._success = self._success or self.sim.success()
        return self.status()
