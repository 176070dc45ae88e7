"""Log times by publication: the instant of the recorded data at which a message was published.

rosbag2 logs a message at its reception time on the recorder's clock. In simulation that
clock is ``/clock``, a best-effort topic of depth 1: when the recorder falls a few milliseconds
behind, its clock jumps to the newest tick while older messages are still queued, and those
get logged ticks too late. A command without a header then pairs with the wrong state.

``PublicationClock`` instead logs each message at the newest header stamp among the recorded
messages *published before it* (ordered by their DDS source timestamps, one wall clock for the
publishers on this host). In lockstep this is exact: command k is published after state k and
before state k+1, so it is logged at t_k. A message waits until a message published after it
has arrived (or ``hold`` seconds), because topics arrive in any order.

A command that names the state it answers (``answers``: a ``Float64MultiArray`` with the
``stamp=`` label of ``pairing``) is logged at that state's stamp, at once. The rule above gave
the same time while messages arrive in about the order they were published, but not for a
recorder that fell behind: the samples its transport's queue could not hold are sent again
later, out of order with the rest, and a command decided before its own state had arrived was
logged at the state before, and paired with it (a recorder stopped through a lockstep episode
on a loaded machine: the last commands logged out of order).

A message naming no state (a teleop's command, the mux's ``~/source``) keeps the rule, with one
more condition where the recorded topics include ``per_state`` ones (published once per state,
each by one writer, as the bridge publishes its joint states and poses): it waits until each of
them has delivered a message published after it. A reliable writer's samples reach the reader
in the order published, repairs included, so by then every state published before the message
is in. Without that, a message was decided as soon as any stamped message published after it
had come (a camera frame, ``/clock``), and with the states repaired late it was logged, and
paired, a state early. It waits at most ``per_state_hold`` seconds (a writer that stopped).
"""
from __future__ import annotations

import bisect
import struct
import time
from collections import deque

from ..cdr import answer_stamp

_STAMP = struct.Struct("<iI")


def header_stamp_ns(data) -> int | None:
    """The header stamp of a little-endian CDR message that starts with std_msgs/Header (or the
    time of a rosgraph_msgs/Clock, laid out the same)."""
    if len(data) < 12 or data[1] != 1:  # encapsulation: CDR little endian
        return None
    sec, nsec = _STAMP.unpack_from(data, 4)
    return sec * 1_000_000_000 + nsec


class PublicationClock:
    """Assigns log times from source timestamps and header stamps; emits messages when decided."""

    def __init__(self, stamped_topics, hold: float = 0.25, window: int = 4096,
                 answers=(), per_state=(), per_state_hold: float = 10.0):
        self.stamped = set(stamped_topics)
        self.answers = set(answers)
        self.hold_ns = int(hold * 1e9)
        self.per_state = set(per_state) & self.stamped
        self.per_state_hold_ns = int(per_state_hold * 1e9)
        self._newest_by_topic: dict = {}  # per-state topic -> newest source timestamp come
        self._src: list[int] = []      # source timestamps of stamped messages (sorted)
        self._stamp: list[int] = []    # their header stamps
        self._window = window
        self._newest_src = -1
        self._pending: deque = deque()
        self._named: list = []  # answers naming their state: decided

    def add(self, topic: str, recv_ns: int, data, src_ns: int) -> None:
        if topic in self.stamped:
            stamp = header_stamp_ns(data)
            if stamp is not None:
                i = bisect.bisect_right(self._src, src_ns)
                self._src.insert(i, src_ns)
                self._stamp.insert(i, stamp)
                if len(self._src) > self._window:
                    del self._src[0], self._stamp[0]
                self._newest_src = max(self._newest_src, src_ns)
                if topic in self.per_state and src_ns > self._newest_by_topic.get(topic, -1):
                    self._newest_by_topic[topic] = src_ns
        if topic in self.answers:
            named = answer_stamp(data)
            if named is not None:
                self._named.append((topic, named, data))
                return
        self._pending.append((topic, recv_ns, data, src_ns, time.monotonic_ns()))

    def _log_time(self, src_ns: int, recv_ns: int) -> int:
        i = bisect.bisect_right(self._src, src_ns)
        if i == 0:
            return recv_ns  # nothing stamped published before it: reception time
        # Stamps are nearly monotonic in publication order; an image rendered late carries an
        # older stamp, so take the newest among the last few published before.
        return max(self._stamp[max(0, i - 32):i])

    def ready(self, flush: bool = False):
        """(topic, log_ns, data) of the messages whose log time is decided (the answers naming
        their state first, then the others in arrival order)."""
        now = time.monotonic_ns()
        out, self._named = self._named, []
        keep = deque()
        # every state published before a message is in once each per-state topic has delivered
        # a message published after it (a writer's samples arrive in order)
        floor = min(self._newest_by_topic.values()) if self._newest_by_topic else None
        for item in self._pending:
            topic, recv_ns, data, src_ns, arrived = item
            if floor is None or topic in self.stamped:  # (a stamped one counts its own stamp)
                decided = self._newest_src > src_ns or now - arrived > self.hold_ns
            else:
                decided = floor > src_ns or now - arrived > self.per_state_hold_ns
            if flush or decided:
                out.append((topic, self._log_time(src_ns, recv_ns), data))
            else:
                keep.append(item)
        self._pending = keep
        return out

    def __len__(self) -> int:
        return len(self._pending) + len(self._named)
