"""Where the package's data lives: the source tree when run from a checkout, else the ament share."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "robot_imitation"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_dir() -> Path:
    """The folder holding ``config/`` and ``launch/``."""
    if (_SOURCE_ROOT / "config").is_dir() and (_SOURCE_ROOT / "package.xml").is_file():
        return _SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # noqa: BLE001 - any lookup failure means the same thing here
        raise FileNotFoundError(
            f"cannot find the {PACKAGE} share folder (no source checkout, and the ament index "
            f"lookup failed: {exc}); is AMENT_PREFIX_PATH set?"
        ) from exc


def config_dir() -> Path:
    return share_dir() / "config"


def available(kind: str) -> list:
    """Names of the built-in ``config/<kind>/*.yaml`` files (kind: tasks, robots, specs)."""
    return sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))


def config_file(kind: str, name_or_path) -> Path:
    """``config/<kind>/<name>.yaml`` for a bare name, else the given path; it must exist.

    Raises ``FileNotFoundError`` naming the built-in choices.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / kind / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"unknown {kind[:-1]} '{name_or_path}' (no {path}); known "
                                f"{kind}: {available(kind)}")
    return path


def ensure_ros_environment() -> None:
    """Make a venv that holds the ROS 2 PyPI wheels look like an installed ROS prefix.

    The wheels do not set ``AMENT_PREFIX_PATH``; package look-ups need it. scripts/bootstrap.sh
    also registers this package in the venv's ament index, so it is found there too.
    """
    # sys.prefix is the running interpreter's venv whether or not the venv was activated (the
    # interpreter's real path would be the base Python's). Not VIRTUAL_ENV: that names the
    # venv of the shell, which need not be this one (`ros2 run` or a launch file starting
    # lib/robot_imitation/<exe>, whose interpreter is this package's venv, from another venv).
    prefix = sys.prefix
    current = os.environ.get("AMENT_PREFIX_PATH", "")
    if Path(prefix, "share", "ament_index").is_dir() and prefix not in current.split(os.pathsep):
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (current, prefix) if p)
