"""Assemble a policy/expert observation from the robot's state topics.

The bridge publishes the state of one instant on several topics (joint states and poses) with
the same stamp. Subscribers get them in any order; ``ObservationAssembler`` keeps the newest
value of each part and hands out the observation dictionary (the same keys and layout as the
gymnasium environment's) once every part carries the same stamp, or the latest values when
asked for them regardless of stamps (timer-driven control).
"""
from __future__ import annotations

import numpy as np

JOINT_STATE_KEYS = ("joint_pos", "joint_vel")


class ObservationError(ValueError):
    pass


class ObservationAssembler:
    def __init__(self, joint_names, pose_keys):
        self.joint_names = list(joint_names)
        self.pose_keys = tuple(pose_keys)
        self._values: dict = {}
        self._stamps: dict = {}
        self._answered = None
        self._index_cache: tuple | None = None

    def _joint_index(self, names) -> np.ndarray:
        names = tuple(names)
        if self._index_cache is None or self._index_cache[0] != names:
            try:
                idx = np.array([names.index(n) for n in self.joint_names], dtype=int)
            except ValueError:
                missing = [n for n in self.joint_names if n not in names]
                raise ObservationError(f"joint_states lacks joints {missing} (has {list(names)})"
                                       ) from None
            self._index_cache = (names, idx)
        return self._index_cache[1]

    def on_joint_state(self, stamp: float, names, position, velocity) -> None:
        """Joint values are taken by name, in the declared order, never by index."""
        idx = self._joint_index(names)
        pos = np.asarray(position, dtype=float)
        vel = np.asarray(velocity, dtype=float)
        if len(pos) != len(names):
            raise ObservationError(f"joint_states has {len(names)} names but {len(pos)} positions")
        self._values["joint_pos"] = pos[idx]
        self._values["joint_vel"] = vel[idx] if len(vel) == len(names) else np.zeros(len(idx))
        self._stamps["joint_state"] = stamp

    def on_pose(self, key: str, stamp: float, pose) -> None:
        self._values[key] = np.asarray(pose, dtype=float)
        self._stamps[key] = stamp

    def synchronized(self) -> tuple[float, dict] | None:
        """(stamp, observation) when all parts share a stamp not handed out before, else None."""
        parts = ("joint_state",) + self.pose_keys
        if any(p not in self._stamps for p in parts):
            return None
        stamp = self._stamps["joint_state"]
        if any(self._stamps[p] != stamp for p in self.pose_keys) or stamp == self._answered:
            return None
        self._answered = stamp
        return stamp, dict(self._values)

    def latest(self) -> tuple[float, dict] | None:
        """(oldest stamp among the parts, observation from the newest values), or None."""
        parts = ("joint_state",) + self.pose_keys
        if any(p not in self._stamps for p in parts):
            return None
        return min(self._stamps[p] for p in parts), dict(self._values)
