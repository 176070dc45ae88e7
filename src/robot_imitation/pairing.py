"""How an answer names the state it answers (the lockstep contract, shared by the bridge and
every node that answers states).

A state is named by its stamp in integer nanoseconds (``stamp_of``: what the bridge publishes
for simulation time t). A ``std_msgs/Float64MultiArray`` command names it in its layout: one
dimension labelled ``stamp=<sec>.<nanosec, 9 digits>`` (``stamp_label``); controllers that
read ``data`` only ignore the label. A ``trajectory_msgs/JointTrajectory`` names it with its
header stamp. See ``bridge.stepper`` for what the bridge does with it.
"""
from __future__ import annotations

STAMP_PREFIX = "stamp="
# the label of a stamp's (seconds, nanoseconds): the one format (also as bytes, cdr.CommandWriter)
STAMP_FORMAT = STAMP_PREFIX + "%d.%09d"
_NS = 1_000_000_000


def stamp_of(t: float) -> int:
    """The stamp (integer nanoseconds) of simulation time ``t``: what the bridge publishes."""
    return int(round(t * 1e9))


def stamp_label(stamp: int) -> str:
    """The layout label naming the state stamped ``stamp`` (ns)."""
    return STAMP_FORMAT % divmod(int(stamp), _NS)


def parse_stamp_label(label: str) -> int | None:
    """The stamp (ns) a layout label names, or None when it names none (or is malformed)."""
    if not label.startswith(STAMP_PREFIX):
        return None
    sec, dot, nsec = label[len(STAMP_PREFIX):].partition(".")
    if not (dot and sec.isdigit() and nsec.isdigit() and len(nsec) == 9):
        return None
    return int(sec) * _NS + int(nsec)


def layout_stamp(layout) -> int | None:
    """The stamp a ``std_msgs/MultiArrayLayout`` names (``stamp_label``), or None."""
    for dim in layout.dim:
        stamp = parse_stamp_label(dim.label)
        if stamp is not None:
            return stamp
    return None


def stamp_order(state: int, status: int) -> int:
    """-1, 0 or 1 as a state's stamp (ns, made from its float seconds: ``stamp_of``) is before,
    at or after an episode status's (ns, read exactly): equal within 1 us, as a wall-clock stamp
    in float seconds keeps only about 0.2 us (states are at least 100 us apart)."""
    return 0 if abs(state - status) <= 1000 else (1 if state > status else -1)


class TimerGate:
    """Whether a controller ticking on a timer (real time) may act on its newest state: once
    statuses come with the states (one has come stamped like a state: ``paired``), only on a
    state whose own episode status is in, so that a new episode resets the controller first (a
    tick between an episode's first state and its status filtered the command from the old
    episode's pose; a status before its state reset onto the old state's joints). Statuses that
    never share a state's stamp never hold a tick back."""

    __slots__ = ("paired", "waits", "since")

    def __init__(self):
        self.paired = False
        self.waits = 0        # ticks held back
        self.since = None     # when the ticks held back in a row began (the caller's clock)

    def order(self, state: int, status: int | None, now: float) -> int:
        """0 when a tick may act on the state stamped ``state`` (ns) given the newest status's
        stamp ``status`` (None: none heard); else 1 (its own status is not in) or -1 (a newer
        status is: its state comes next): no command this tick (counted)."""
        order = 0 if status is None else stamp_order(state, status)
        if order == 0:
            self.paired = self.paired or status is not None
        elif self.paired:
            self.waits += 1
            if self.since is None:
                self.since = now
            return order
        self.since = None
        return 0

    def describe(self, state_s: float, order: int, now: float) -> str:
        """The line for ticks held back since ``since``."""
        return (f"state {state_s:.3f} s: " + ("no episode status of it" if order > 0 else
                                              "older than the newest episode status")
                + f"; no command for {now - self.since:.1f} s ({self.waits} such ticks in all)")
