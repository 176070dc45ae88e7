"""The tasks as gymnasium environments (``robot_imitation/Reach-v0``, ``robot_imitation/Push-v0``,
``robot_imitation/PushObstacle-v0``)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .tasks import POSE_SIZE, TaskSim


class ImitationEnv(gym.Env):
    """A ``TaskSim`` behind the gymnasium API.

    Observation: a dict with ``joint_pos`` and ``joint_vel`` (arm then gripper joints),
    ``ee_pose`` and the task's poses (x y z qw qx qy qz). Action: arm joint position targets
    followed by the gripper opening fraction. One step is one control tick.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "reach", robot: str | None = None, render_mode: str | None = None,
                 camera: str | None = None, width: int = 320, height: int = 240):
        self.sim = TaskSim(task, robot)
        self.render_mode = render_mode
        self.camera = camera or next(iter(self.sim.cfg.cameras or {}), None)
        self._size = (height, width)
        self._renderer = None
        self.metadata = dict(self.metadata, render_fps=int(round(self.sim.cfg.control_rate)))
        nj = len(self.sim.robot.joint_names)
        obs = {"joint_pos": spaces.Box(-np.inf, np.inf, (nj,), np.float64),
               "joint_vel": spaces.Box(-np.inf, np.inf, (nj,), np.float64),
               "ee_pose": spaces.Box(-np.inf, np.inf, (POSE_SIZE,), np.float64)}
        for key in self.sim.logic.pose_keys:
            obs[key] = spaces.Box(-np.inf, np.inf, (POSE_SIZE,), np.float64)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(self.sim.action_low, self.sim.action_high, dtype=np.float64)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        self.sim.reset(seed)
        self._steps = 0
        return self.sim.observe(), {"seed": seed, "is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=float)
        if action.shape != (self.sim.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be {self.sim.action_dim} finite numbers, got {action!r}")
        self.sim.step(np.clip(action, self.sim.action_low, self.sim.action_high))
        self._steps += 1
        success = self.sim.success()
        truncated = self._steps >= self.sim.cfg.max_steps
        return self.sim.observe(), self.sim.reward(), success, truncated and not success, {
            "is_success": success}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        import mujoco

        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.sim.model, *self._size)
        self._renderer.update_scene(self.sim.data, camera=self.camera if self.camera else -1)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
