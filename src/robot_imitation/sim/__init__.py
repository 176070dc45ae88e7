"""Simulation core: robot models, tasks, scripted experts and the gymnasium environments.

Importing this package registers ``robot_imitation/Reach-v0`` and ``robot_imitation/Push-v0``.
"""
import os

# Offscreen rendering needs a GL platform; EGL works headless (Mesa's software renderer).
os.environ.setdefault("MUJOCO_GL", "egl")

from .env import ImitationEnv, register_envs  # noqa: E402

register_envs()

__all__ = ["ImitationEnv", "register_envs"]
