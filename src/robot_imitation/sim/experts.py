"""Scripted experts: privileged-state controllers that solve the built-in tasks.

An expert is a pure function of the observation dictionary (the same dictionary the
gymnasium environment returns and the ROS nodes assemble from topics): it keeps no hidden
state, so it can label any visited state, which is what DAgger needs.
"""
from __future__ import annotations

import numpy as np

from .kinematics import DifferentialIK
from .tasks import TaskSim


class Expert:
    """Base: Cartesian targets for the end effector, turned into joint targets by IK."""

    def __init__(self, sim: TaskSim, max_step: float = 0.06):
        r = sim.robot
        self.sim = sim
        self.n_arm = r.n_arm
        self.ik = DifferentialIK(sim.model, r.ee_site, r.arm_qpos, r.arm_qvel, r.arm_limits)
        # Keep the tool orientation of the home pose (gripper pointing down).
        _, self.tool_quat = self.ik.site_pose(r.home)
        self.max_step = max_step

    def cartesian_target(self, obs: dict) -> tuple[np.ndarray, float]:
        """(end-effector position target, gripper opening) for this observation."""
        raise NotImplementedError

    def __call__(self, obs: dict) -> np.ndarray:
        target, grip = self.cartesian_target(obs)
        q = np.asarray(obs["joint_pos"][: self.n_arm], dtype=float)
        q_cmd = self.ik.solve(q, target, self.tool_quat, max_step=self.max_step, iterations=2)
        return np.append(q_cmd, grip)


class ReachExpert(Expert):
    def cartesian_target(self, obs):
        return np.asarray(obs["target_pose"][:3], dtype=float), 1.0


class PushExpert(Expert):
    """Go behind the puck on the puck-goal line, descend, push along the line.

    The phase is read off the geometry of the current observation, never remembered.
    """

    def __init__(self, sim: TaskSim, max_step: float = 0.06):
        super().__init__(sim, max_step)
        p = sim.cfg.params
        self.r = p["puck_radius"]
        self.push_z = p["puck_half_height"]          # fingertips at the puck's mid-height
        self.safe_z = 0.12
        self.standoff = self.r + 0.045               # pre-push distance behind the puck centre
        self.push_speed = 0.03                       # m per control tick while pushing

    def cartesian_target(self, obs):
        ee = np.asarray(obs["ee_pose"][:3], dtype=float)
        puck = np.asarray(obs["object_pose"][:2], dtype=float)
        goal = np.asarray(obs["goal_pose"][:2], dtype=float)
        to_goal = goal - puck
        dist = np.linalg.norm(to_goal)
        u = to_goal / dist if dist > 1e-6 else np.array([1.0, 0.0])
        rel = ee[:2] - puck
        along = float(rel @ u)                       # < 0: behind the puck
        lateral = float(rel @ np.array([-u[1], u[0]]))
        pre = puck - u * self.standoff

        behind = -self.standoff - 0.03 < along < -self.r + 0.01
        aligned = abs(lateral) < 0.015
        low = ee[2] < self.push_z + 0.025
        if behind and aligned and low:
            # Push: advance along the line through the puck centre; re-aiming every tick
            # pulls the pusher back onto the line when the puck drifts sideways.
            advance = min(self.push_speed, dist)
            xy = puck - u * (self.r + 0.01) + u * advance
            return np.array([*xy, self.push_z]), 0.0
        if np.linalg.norm(ee[:2] - pre) < 0.03:
            return np.array([*pre, self.push_z]), 0.0   # descend behind the puck
        if ee[2] < self.safe_z - 0.03 and np.linalg.norm(rel) < self.standoff + 0.06:
            return np.array([*ee[:2], self.safe_z]), 0.0  # rise clear of the puck first
        return np.array([*pre, self.safe_z]), 0.0      # travel above the pre-push point


EXPERTS = {"reach": ReachExpert, "push": PushExpert}


def make_expert(sim: TaskSim) -> Expert:
    key = sim.cfg.name.split("_")[0]
    if key not in EXPERTS:
        raise ValueError(f"no scripted expert for task '{sim.cfg.name}' (have: {sorted(EXPERTS)})")
    return EXPERTS[key](sim)
