"""Simulation core: robot models, tasks, scripted experts and the gymnasium environments."""
from ..paths import import_mujoco, set_default_mujoco_gl

# Offscreen rendering needs a GL platform; EGL works headless (Mesa's software renderer),
# where its library is installed (without it, MUJOCO_GL=egl would fail `import mujoco`).
set_default_mujoco_gl()
import_mujoco()   # a MUJOCO_GL it cannot use: one line, not MuJoCo's traceback

from .env import ImitationEnv  # noqa: E402

__all__ = ["ImitationEnv"]
