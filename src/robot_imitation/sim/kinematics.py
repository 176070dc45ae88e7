"""Differential inverse kinematics on a MuJoCo model (damped least squares).

Used by the scripted experts and by the Cartesian teleop: a desired end-effector displacement
becomes a joint position target.
"""
from __future__ import annotations

import mujoco
import numpy as np


def quat_error(target_wxyz: np.ndarray, current_wxyz: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame) that turns ``current`` into ``target``."""
    neg = np.empty(4)
    mujoco.mju_negQuat(neg, current_wxyz)
    diff = np.empty(4)
    mujoco.mju_mulQuat(diff, target_wxyz, neg)
    if diff[0] < 0:  # shortest way round
        diff = -diff
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, diff, 1.0)
    return vel


class DifferentialIK:
    """Joint targets that move a site by a Cartesian twist, on a private copy of the model data."""

    def __init__(self, model: mujoco.MjModel, site_id: int, qpos_idx: np.ndarray,
                 qvel_idx: np.ndarray, limits: np.ndarray, damping: float = 0.05,
                 orientation_weight: float = 0.5):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = site_id
        self.qpos_idx = np.asarray(qpos_idx)
        self.qvel_idx = np.asarray(qvel_idx)
        self.limits = np.asarray(limits, dtype=float)
        self.damping = damping
        self.w_rot = orientation_weight
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._quat = np.zeros(4)

    def site_pose(self, q_arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward kinematics: (position, quaternion wxyz) of the site for arm joints ``q_arm``."""
        self.data.qpos[self.qpos_idx] = q_arm
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mju_mat2Quat(self._quat, self.data.site_xmat[self.site])
        return self.data.site_xpos[self.site].copy(), self._quat.copy()

    def solve(self, q_arm: np.ndarray, target_pos: np.ndarray, target_quat: np.ndarray | None,
              max_step: float = 0.05, iterations: int = 1) -> np.ndarray:
        """Joint positions that bring the site towards ``target_pos`` (and ``target_quat``).

        ``max_step`` caps the Cartesian distance handled per call (metres).
        """
        q = np.array(q_arm, dtype=float)
        for _ in range(iterations):
            pos, quat = self.site_pose(q)
            dx = np.asarray(target_pos, dtype=float) - pos
            norm = np.linalg.norm(dx)
            if norm > max_step:
                dx *= max_step / norm
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
            jp = self._jacp[:, self.qvel_idx]
            if target_quat is not None:
                dr = quat_error(np.asarray(target_quat, dtype=float), quat) * self.w_rot
                jac = np.vstack([jp, self._jacr[:, self.qvel_idx] * self.w_rot])
                err = np.concatenate([dx, dr])
            else:
                jac, err = jp, dx
            jjt = jac @ jac.T + (self.damping ** 2) * np.eye(jac.shape[0])
            dq = jac.T @ np.linalg.solve(jjt, err)
            q = np.clip(q + dq, self.limits[:, 0], self.limits[:, 1])
        return q
