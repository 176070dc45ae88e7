"""A scripted supervisor: the person who watches an HG-DAgger run, in simulation.

In human-gated DAgger the learner drives and a person takes over (holds the intervention
button) when the robot gets into trouble; only the steps the person drove are labelled. In
simulation ``InterventionGate`` stands in for that person: it decides from what a person sees
(where the arm and the object are), never from the expert's or the learner's actions. The
gymnasium study (``learning/dagger_sim``) and the ROS ``scripted_supervisor`` node use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..settings import Limits, setting

_COUNT, _TICKS, _METRES = Limits(int, low=1), Limits(int, low=0), Limits(float, low=0.0)


def stuck(path: list, steps: int, distance: float) -> bool:
    """True when the last of ``path`` (end-effector positions) is within ``distance`` of the
    one ``steps`` before it."""
    return len(path) > steps and np.linalg.norm(path[-1] - path[-1 - steps]) < distance


@dataclass
class InterventionGate:
    """A scripted stand-in for the person watching an HG-DAgger run: it takes control when the
    robot is stuck (the end effector moved less than ``stall_distance`` over ``stall_steps``),
    pushes the task backwards (its gap, see ``task_gap``, ``regress`` m wider than its best so
    far) or makes no progress (the best gap not ``progress`` m better for ``patience`` ticks),
    and hands control back after ``hold`` ticks. It looks at what a person sees (where the arm,
    the object, the goal are), never at the expert's or the learner's actions."""

    # each setting with its limits and description: the scripted supervisor node's parameters,
    # the DAgger settings' supervisor mapping and options come from here
    stall_steps: int = setting(10, _COUNT, help="take over when the end effector moved less "
                               "than stall_distance over this many ticks")
    stall_distance: float = setting(0.01, _METRES, help="m (see stall_steps)")
    regress: float = setting(0.02, _METRES, help="take over when the task's gap (the object's "
                             "distance to the goal) is this much (m) wider than its best")
    hold: int = setting(15, _COUNT, help="ticks the expert drives per intervention")
    patience: int = setting(30, _TICKS, help="take over after this many ticks without "
                            "`progress` m of progress (0: never)")
    progress: float = setting(0.01, _METRES, help="m (see patience)")

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.ee, self.best, self.left = [], None, 0
        self.mark, self.waited = None, 0  # the gap progress is measured from, ticks since

    def expert_drives(self, obs: dict) -> bool:
        """Update with this tick's observation; True while the expert has control."""
        gap = task_gap(obs)
        if self.left > 0:
            self.left -= 1
            drive = True
        else:  # the policy's motion only: the stall window restarts after each intervention
            self.ee.append(np.asarray(obs["ee_pose"][:3], dtype=float))
            halted = stuck(self.ee, self.stall_steps, self.stall_distance)
            backwards = gap is not None and self.best is not None and gap > self.best + self.regress
            idle = self.patience > 0 and self.waited >= self.patience
            drive = halted or backwards or idle
            if drive:
                self.left = self.hold - 1
                self.ee.clear()
        if gap is not None:
            self.best = gap if self.best is None else min(self.best, gap)
            if self.mark is None or gap < self.mark - self.progress or drive:
                self.mark, self.waited = gap, 0
            else:
                self.waited += 1
        return drive


def task_gap(obs: dict) -> float | None:
    """How far the task is from done, as a person sees it: the object's distance to the goal
    on the table (contact tasks), else the end effector's distance to the target (reach); None
    when the observation has neither."""
    if "object_pose" in obs and "goal_pose" in obs:
        a, b, n = obs["object_pose"], obs["goal_pose"], 2
    elif "target_pose" in obs:
        a, b, n = obs["ee_pose"], obs["target_pose"], 3
    else:
        return None
    return float(np.linalg.norm(np.asarray(a[:n], dtype=float) - np.asarray(b[:n], dtype=float)))
