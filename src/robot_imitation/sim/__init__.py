"""Simulation core: robot models, tasks, scripted experts and the gymnasium environments."""
import os

# Offscreen rendering needs a GL platform; EGL works headless (Mesa's software renderer).
os.environ.setdefault("MUJOCO_GL", "egl")

from .env import ImitationEnv  # noqa: E402

__all__ = ["ImitationEnv"]
