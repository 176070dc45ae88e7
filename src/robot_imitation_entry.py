"""The suite's executables: the console scripts (``ros2 run``, ``ros2 launch``, ``.venv/bin``)
and the processes ``robot_imitation.ros.launcher`` starts (``python -m robot_imitation_entry
<executable> [args]``).

A module outside the package: importing any part of ``robot_imitation`` imports the package
first (gymnasium with it), and a node's imports (rclpy, MuJoCo, torch) take 0.3-1 s. A Ctrl-C
in that time, or the launcher stopping a graph whose other node failed to start, raised
``KeyboardInterrupt`` in the middle of an import: a traceback in every process still starting.
Here the import is made inside the executable's function, and such a signal ends it with one
line and exit code 130. Once started, the node's own handlers take over
(``nodes.common.ShutdownRequest``, the CLI's).
"""
from __future__ import annotations

import importlib
import signal
import sys

# executable -> the module whose ``main()`` it runs
EXECUTABLES = {
    "mujoco_bridge": "robot_imitation.nodes.bridge_node",
    "scripted_expert": "robot_imitation.nodes.expert_node",
    "episode_runner": "robot_imitation.nodes.episode_runner",
    "episode_recorder": "robot_imitation.nodes.recorder_node",
    "joy_teleop": "robot_imitation.nodes.joy_teleop_node",
    "keyboard_teleop": "robot_imitation.nodes.keyboard_teleop_node",
    "trainer": "robot_imitation.nodes.trainer_node",
    "dagger_node": "robot_imitation.nodes.dagger_node",
    "policy_node": "robot_imitation.nodes.policy_node",
    "command_mux": "robot_imitation.nodes.command_mux_node",
    "scripted_supervisor": "robot_imitation.nodes.supervisor_node",
    "container": "robot_imitation.nodes.container",
    "robot-imitation": "robot_imitation.cli",
}


def start(executable: str) -> int:
    """Import ``executable``'s module and run its ``main()``; a SIGINT before its own handlers
    are in place ends it with one line (exit code 130). Once its exit code is decided, SIGINT
    and SIGTERM are ignored: Python's exit puts the default handlers back, and a Ctrl-C there
    (or a ``KeyboardInterrupt`` left uncaught, which Python ends by killing itself with SIGINT)
    ended a finished command with -2, its output already printed."""
    try:
        main = importlib.import_module(EXECUTABLES[executable]).main
    except KeyboardInterrupt:
        _ignore_signals()  # first: another Ctrl-C while this writes must not escape
        sys.stderr.write(f"[{executable}] interrupted while starting: not started\n")
        return 130
    except OSError as exc:
        paths = sys.modules.get("robot_imitation.paths")
        if paths is None or not isinstance(exc, paths.MujocoGLError):
            raise
        sys.stderr.write(f"[{executable}] {exc}\n")  # a MUJOCO_GL it cannot use: one line
        return 1
    try:
        return main()
    except KeyboardInterrupt:  # (before its handlers were installed)
        _ignore_signals()
        sys.stderr.write(f"[{executable}] interrupted\n")
        return 130
    finally:
        _ignore_signals()


def _ignore_signals() -> None:
    """SIGINT and SIGTERM ignored from now on (a signal that races with this: again)."""
    while True:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def _ended(executable: str) -> int:
    """``start(executable)``'s exit code; a signal that races with its end (a Ctrl-C flood)
    gives 130, never a traceback. A handler's own first instruction can be interrupted too
    (Python runs a pending signal's handler on entering any function, ``_ignore_signals``
    included), so the ignoring is retried in a loop here, not in a handler."""
    try:
        return start(executable)
    except KeyboardInterrupt:  # a signal raced with the end of the command: ended anyway
        pass
    while True:
        try:
            _ignore_signals()
            return 130
        except KeyboardInterrupt:
            continue


def _entry(executable: str):
    def entry() -> int:
        return _ended(executable)

    entry.__name__ = entry.__qualname__ = executable.replace("-", "_")
    entry.__doc__ = f"The ``{executable}`` executable ({EXECUTABLES[executable]})."
    return entry


for _name in EXECUTABLES:  # mujoco_bridge(), ..., robot_imitation(): the console scripts
    globals()[_name.replace("-", "_")] = _entry(_name)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in EXECUTABLES:
        given = f"no executable {sys.argv[1]!r}" if len(sys.argv) > 1 else "no executable given"
        sys.exit(f"robot_imitation_entry: {given} (one of {', '.join(EXECUTABLES)})")
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    sys.exit(_ended(sys.argv[0]))
