"""The lockstep protocol without ROS: which answer belongs to which state, and when to step.

In lockstep the bridge publishes the state of instant k (joint states, poses, episode status,
all stamped with the simulation time of k), waits until every answering command topic has
answered *that* state, then steps one control tick and publishes state k+1. The final state of
an episode goes out with its status (``done``), after the episode's camera frames; the answers
to it follow (a controller may wait for a state's status before answering it, as the policy node
does), and a recorder stopping on that status waits for them (``nodes.recorder_node``).

Pairing is explicit. An answer names the state it answers:

- ``std_msgs/Float64MultiArray`` commands carry the state's stamp in their layout: one
  dimension labelled ``stamp=<sec>.<nanosec>`` (``pairing``; ``nodes.common.answer`` builds
  such a message). Controllers that read
  ``data`` only (ros2_control's forward command controllers) are not affected by it.
- ``trajectory_msgs/JointTrajectory`` carries it as its header stamp (the trajectory starts at
  that state: the same meaning the stamp has for joint_trajectory_controller).

An answer stamped with the current state is applied and counts as that state's answer. One
stamped with an earlier state is late (its state has been stepped already, or its episode was
reset): it is dropped, never applied to the state that follows, and counted. One stamped ahead
of the current state answers nothing this bridge published: dropped and counted. Commands
without a stamp (a person's teleop, a third-party controller) are taken by arrival, as a robot
would: applied, and they answer the current state. No wall-clock window decides any of this;
the only timer left is the republish of a state nobody answered (a message lost before the
answerers were connected), which changes no pairing.

``Lockstep`` holds no threads and no ROS: the bridge node calls it under its lock.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterable

from ..pairing import stamp_of
from .core import BridgeCore, CommandResult, EpisodeStatus


class Verdict(enum.Enum):
    ANSWER = "answer"          # names the current state: applied
    UNSTAMPED = "unstamped"    # names no state: applied, taken as the current state's answer
    LATE = "late"              # names an earlier state: dropped
    AHEAD = "ahead"            # names a state not published yet: dropped

    @property
    def applied(self) -> bool:
        return self in (Verdict.ANSWER, Verdict.UNSTAMPED)


@dataclass
class LockstepCounters:
    answers: int = 0     # stamped answers to the current state, applied
    unstamped: int = 0   # commands without a stamp, applied by arrival
    late: int = 0        # answers to an earlier state, dropped
    ahead: int = 0       # answers to a state never published, dropped
    steps: int = 0       # control ticks stepped in lockstep


class Lockstep:
    """Pair answers with states and step a ``BridgeCore`` one tick per answered state.

    ``need``: the command sources ("arm", "gripper") that must answer a state before it is
    stepped. ``auto_reset``: start the next episode (seed from ``next_seed()``) as soon as one
    is done; otherwise a finished episode holds until ``reset``.
    """

    def __init__(self, core: BridgeCore, need: Iterable[str] = ("arm", "gripper"),
                 auto_reset: bool = False, next_seed: Callable[[], int] | None = None):
        self.core = core
        self.need = frozenset(need)
        self.auto_reset = auto_reset
        self.next_seed = next_seed
        self.counters = LockstepCounters()
        self._answered: set = set()
        self._answered_stamp: int | None = None

    # ----------------------------------------------------------------- the current state
    @property
    def stamp(self) -> int:
        """The stamp (ns) of the current state: the one published and waiting for answers."""
        return stamp_of(self.core.clock)

    @property
    def answered(self) -> frozenset:
        """The sources that have answered the current state."""
        return frozenset(self._answered) if self._answered_stamp == self.stamp else frozenset()

    def complete(self) -> bool:
        """Has every needed source answered the current state?"""
        return self.need <= self.answered

    def held(self) -> bool:
        """Is the episode over and waiting for ``reset`` (without auto_reset)?"""
        return not self.auto_reset and self.core.status().done

    # ----------------------------------------------------------------- answers
    def classify(self, stamp: int | None) -> Verdict:
        """What an answer naming ``stamp`` (None: no stamp) is to the current state."""
        if stamp is None:
            return Verdict.UNSTAMPED
        current = self.stamp
        if stamp == current:
            return Verdict.ANSWER
        return Verdict.LATE if stamp < current else Verdict.AHEAD

    def offer(self, source: str, stamp: int | None,
              apply: Callable[[], CommandResult]) -> tuple[Verdict, CommandResult | None]:
        """An answer from ``source`` naming ``stamp``: applied with ``apply()`` (the core's
        command call) when it answers the current state or names none; dropped otherwise.
        Returns the verdict and the command's result (None when dropped)."""
        verdict = self.classify(stamp)
        if not verdict.applied:
            if verdict is Verdict.LATE:
                self.counters.late += 1
            else:
                self.counters.ahead += 1
            return verdict, None
        result = apply()
        if verdict is Verdict.ANSWER:
            self.counters.answers += 1
        else:
            self.counters.unstamped += 1
        if result.ok:
            current = self.stamp
            if self._answered_stamp != current:
                self._answered, self._answered_stamp = set(), current
            self._answered.add(source)
        return verdict, result

    # ----------------------------------------------------------------- stepping
    def advance(self) -> EpisodeStatus | None:
        """Step one control tick when the current state is answered and its episode is not
        over; returns the status after the tick (None: nothing stepped). With ``auto_reset``
        a finished episode is followed at once by the next one (the returned status is the
        finished episode's)."""
        if not self.complete() or self.held():
            return None
        status = self.core.step_tick()
        self.counters.steps += 1
        if status.done and self.auto_reset:
            self.core.reset(self.next_seed() if self.next_seed else None)
        return status

    def reset(self, seed: int | None) -> None:
        """Start a new episode: its first state is the current one, answered by nobody yet.
        Answers to the old episode's states name earlier stamps: they are late, whenever
        they arrive."""
        self.core.reset(seed)
