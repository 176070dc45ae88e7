"""Keyboard teleop: single keys in a terminal -> Cartesian end-effector velocity -> joint commands.

Run it in a terminal (``ros2 run robot_imitation keyboard_teleop``; under ``ros2 launch`` give
the node ``prefix='xterm -e'``): stdin is switched to cbreak mode (keys arrive one by one,
unechoed; Ctrl-C still quits) and restored on exit, whatever the reason (closing the terminal,
SIGHUP, stops the node as Ctrl-C does). A motion key moves the end effector for ``key_hold``
seconds after its last press (hold the key: the terminal's auto-repeat keeps it going):

    w/s: +x/-x   a/d: +y/-y   r/f: up/down   q/e: yaw   space: gripper open/close
    n: start an episode   k: stop and keep it   x: discard it   p: release the arm   h: help

There is no deadman on a keyboard: the first motion or gripper key engages teleop (from the
measured pose); from then on the node publishes the held pose at the control rate (what a
recorder wants) until ``p`` releases the arm. Everything else (IK, topics, recorder services,
parameters) is shared with the gamepad teleop (``joy_teleop_node.TeleopNode``).
"""
from __future__ import annotations

import atexit
import codecs
import os
import select
import sys
import time

import numpy as np

from .common import Param, run

from ..teleop.core import KEY_HELP, KeyboardTwist, key_action  # noqa: E402
from .joy_teleop_node import TeleopNode  # noqa: E402


class NotATerminal(RuntimeError):
    pass


class CbreakTerminal:
    """A terminal file descriptor in cbreak mode; ``restore`` puts the old mode back."""

    # how long the start of an escape sequence waits for its rest (s): a terminal sends a
    # sequence at once, a slow link may split it (tmux's escape-time default is the same)
    ESCAPE_TIME = 0.5

    def __init__(self, fd: int):
        import termios
        import tty

        self.fd = fd
        self._termios = termios
        self._saved = termios.tcgetattr(fd)
        atexit.register(self.restore)
        tty.setcbreak(fd, termios.TCSANOW)
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._pending = ""  # an escape sequence's start, at the end of the last read
        self._pending_since = 0.0

    def read_keys(self, now: float | None = None) -> list:
        """Keys typed since the last call (without blocking); escape sequences dropped, also
        one split across reads (an arrow key's ESC, then its "[A" a packet later over a slow
        link: "A" moved the arm as "a"). The start of a sequence at the end of a read waits
        for the next read, up to ``ESCAPE_TIME`` s; a lone ESC key is dropped then."""
        now = time.monotonic() if now is None else now
        data = b""
        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 256)
            except OSError:  # a hung-up terminal (EIO): no more keys
                chunk = b""
            if not chunk:
                self.eof = True
                break
            data += chunk
        if self._pending and (now - self._pending_since > self.ESCAPE_TIME or self.eof):
            self._pending = ""  # an ESC (or a sequence's start) with nothing after it
        text = self._pending + self._decoder.decode(data)
        if not text:
            return []
        keys, self._pending = split_keys(text)
        if data:
            self._pending_since = now
        return keys

    def restore(self) -> None:
        if self._saved is not None:
            try:
                self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self._saved)
            except (OSError, self._termios.error):
                pass
            self._saved = None


def parse_keys(text: str) -> list:
    """Single characters of ``text``, skipping terminal escape sequences (arrow keys etc.)."""
    return split_keys(text)[0]


def split_keys(text: str) -> tuple[list, str]:
    """(single characters of ``text`` outside escape sequences, the start of an escape
    sequence that ``text`` ends with: "" if none). ``ESC [ ... final byte``, ``ESC O x`` and
    ``ESC x`` (Alt-x) are sequences."""
    keys, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            start = i
            i += 1
            if i < len(text) and text[i] in "[O":
                csi = text[i] == "["
                i += 1
                while csi and i < len(text) and not ("@" <= text[i] <= "~"):
                    i += 1
            if i >= len(text):  # the sequence goes on in a later read
                return keys, text[start:]
            i += 1
            continue
        keys.append(ch)
        i += 1
    return keys, ""


class KeyboardTeleop(TeleopNode):
    NODE_NAME = "keyboard_teleop"
    PARAMETERS = TeleopNode.PARAMETERS + (
        Param("linear_speed", 0.1, "end-effector speed of a motion key (m/s)", read_only=True,
              min_value=0.0, max_value=2.0),
        Param("angular_speed", 0.4, "yaw rate of q/e (rad/s)", read_only=True, min_value=0.0,
              max_value=6.0),
        Param("key_hold", 0.5, "a key press moves for this long (s); the terminal's auto-repeat "
              "extends it while the key is held", read_only=True, min_value=0.05, max_value=5.0),
    )

    def __init__(self, stdin_fd: int | None = None):
        fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        if not os.isatty(fd):
            raise NotATerminal("keyboard_teleop reads keys from a terminal, but stdin is not a "
                               "TTY: run it in a terminal (ros2 run robot_imitation "
                               "keyboard_teleop), or under ros2 launch with prefix='xterm -e'; "
                               "use joy_teleop for a gamepad")
        super().__init__(self.NODE_NAME)
        self.keys = KeyboardTwist(self.p["linear_speed"], self.p["angular_speed"],
                                  self.p["key_hold"])
        self._latched = False
        self.terminal = CbreakTerminal(fd)
        self.get_logger().info(f"keyboard teleop for task '{self.sim.cfg.name}' at "
                               f"{1 / self.period:g} Hz\n{KEY_HELP}")

    def poll_input(self, now: float) -> None:
        was_eof = self.terminal.eof
        for key in self.terminal.read_keys():
            self.on_key(key, now)
        if self.terminal.eof and not was_eof:
            self.get_logger().warning("stdin closed: no more keys (teleop released)")
            self.on_release()

    def on_key(self, key: str, now: float) -> None:
        kind = key_action(key)
        if kind is None:
            return
        if kind == "move":
            self.keys.press(key, now)
            self._latched = True
        elif kind == "gripper_toggle":
            self._latched = True
            self.action(kind)
        elif kind == "help":
            self.get_logger().info(KEY_HELP)
        else:
            self.action(kind)

    def on_release(self) -> None:
        self._latched = False
        self.keys.clear()

    def enabled(self, now: float) -> bool:
        return self._latched

    def twist(self, now: float) -> np.ndarray:
        return self.keys.twist(now)

    def close(self) -> None:
        self.terminal.restore()


def main(args=None) -> int:
    return run(KeyboardTeleop, args)


if __name__ == "__main__":
    raise SystemExit(main())
