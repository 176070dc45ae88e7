"""Assemble an observation from the robot's state topics, as the spec declares it.

The bridge publishes the state of one instant on several topics with one stamp; subscribers get
them in any order. ``ObservationAssembler`` turns each message into arrays with
``Spec.extract`` (the code the dataset builder uses) and hands out the observation dictionary
once every part carries the same stamp (``synchronized``), or the newest values regardless of
stamps (``latest``, for timer-driven control). With ``cameras="latest"`` the camera parts are
left out of the stamp match: a state is complete once the other parts share its stamp, with the
newest frame of each camera (cameras slower than the joint states, as on a robot); the default,
``"stamp"``, waits for each camera's frame of the state's stamp (lockstep simulation, a recorded
episode played back).
"""
from __future__ import annotations

import importlib

from .cdr import CdrError, readers
from .spec import Spec, SpecError, message_stamp



def message_class(type_name: str):
    """The rclpy message class of ``pkg/msg/Type``."""
    pkg, _, name = type_name.replace("/msg/", "/").partition("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise SpecError(f"message type {type_name} is not installed") from None


def deserialized(raw: bytes, mtype: str, why: Exception | None = None, cls=None):
    """``raw`` deserialized as a ``mtype`` message (``pkg/msg/Name``; ``cls``: its class, when
    the caller has it), for bytes of a raw subscription (``why``: why the direct CDR reader
    refused them, if one did); ``SpecError`` (one line: the type, why, the size) for bytes that
    are none: a malformed message is dropped by its reader, never the end of a node."""
    from rclpy.serialization import deserialize_message

    try:
        return deserialize_message(raw, cls or message_class(mtype))
    except Exception:  # noqa: BLE001 - rclpy raises several kinds for bad bytes
        because = "" if why is None else f"{why}, "
        raise SpecError(f"a message that cannot be deserialized as {mtype} ({because}"
                        f"{len(raw)} bytes)") from None


CAMERA_FRAMES = ("stamp", "latest")


class ObservationAssembler:
    def __init__(self, spec: Spec, fields=None, cameras: str = "stamp"):
        if cameras not in CAMERA_FRAMES:
            raise ValueError(f"cameras must be one of {CAMERA_FRAMES}, not {cameras!r}")
        self.spec = spec
        self.fields = tuple(fields if fields is not None else spec.observations)
        # the parts whose stamps must match (all, or all but the cameras)
        self._matched = None if cameras == "stamp" else tuple(
            f.key for f in self.fields if not f.is_image)
        self.by_topic: dict = {}
        for f in self.fields:
            self.by_topic.setdefault(f.topic, []).append(f)
        self._values: dict = {}
        self._stamps: dict = {}
        self._answered = None
        # the parts of the state handed out last that came again with its stamp since (a
        # republish), and the parts a whole repetition needs (cameras aside: a republished
        # state brings no new frame)
        self._again: set = set()
        self._repeat = frozenset(f.key for f in self.fields if not f.is_image) or \
            frozenset(f.key for f in self.fields)
        self._readers = None  # cdr.MessageReader per topic, made on the first raw message

    @property
    def topics(self) -> dict:
        """{topic: type name} to subscribe to."""
        return {t: fs[0].type for t, fs in self.by_topic.items()}

    def on_message(self, topic: str, msg, stamp: float | None = None) -> None:
        """Take a message; ``stamp`` defaults to its header stamp. Raises ``SpecError``."""
        t = message_stamp(msg) if stamp is None else stamp
        for f in self.by_topic[topic]:
            self._values[f.key] = self.spec.extract(f, msg)
            self._stamps[f.key] = t
            if t == self._answered:
                self._again.add(f.key)

    def on_raw(self, topic: str, raw: bytes) -> None:
        """Take a serialized message (a raw subscription's): the fields read straight from its
        CDR bytes (``cdr.MessageReader``), the same values and stamp as ``on_message`` of the
        deserialized message; bytes the reader does not take are deserialized."""
        if self._readers is None:
            self._readers = readers(self.spec, self.fields)
        try:
            stamp_ns, values = self._readers[topic].read(raw)
        except CdrError as exc:
            try:
                msg = deserialized(raw, self.topics[topic], exc)
            except SpecError as err:
                raise SpecError(f"{topic}: {err}") from None
            self.on_message(topic, msg)
            return
        # the float message_stamp computes, bit for bit (stamps are compared for equality)
        t = None if stamp_ns is None else \
            stamp_ns // 1_000_000_000 + (stamp_ns % 1_000_000_000) * 1e-9
        self._values.update(values)
        for key in values:
            self._stamps[key] = t
        if t == self._answered:
            self._again.update(values)

    def _complete_stamp(self) -> float | None:
        if len(self._stamps) < len(self.fields):
            return None
        stamps = set(self._stamps.values()) if self._matched is None else {
            self._stamps[k] for k in self._matched}
        if len(stamps) != 1:
            return None
        stamp = stamps.pop()
        return None if stamp == self._answered else stamp

    def complete(self) -> bool:
        """Whether ``synchronized`` would hand out a state now (nothing is taken)."""
        return self._complete_stamp() is not None

    def synchronized(self) -> tuple[float, dict] | None:
        """(stamp, observation) when all parts share a stamp not handed out before, else None."""
        stamp = self._complete_stamp()
        if stamp is None:
            return None
        self._answered = stamp
        self._again.clear()
        return stamp, dict(self._values)

    def repeated(self) -> float | None:
        """The stamp of the state handed out last if it came again whole since then (or since
        the last call that returned it): each part, cameras aside, again with that stamp, and
        no part newer. Else None. A lockstep bridge publishes a state again when no answer
        came, and a controller that answered it answers again (``nodes.common.LastAnswer``)."""
        if self._answered is None or not self._again >= self._repeat:
            return None
        self._again.clear()
        stamp = self._answered
        return stamp if all(self._stamps[k] == stamp for k in self._repeat) else None

    def oldest_part(self) -> tuple[float, str] | None:
        """(stamp, key) of the oldest part among those a state needs with its own stamp (all,
        or all but the cameras with ``cameras="latest"``), or None before every part came. A
        part whose topic went silent keeps every state from completing: its age says so."""
        if len(self._stamps) < len(self.fields):
            return None
        key = min(self._matched or self._stamps, key=self._stamps.__getitem__)
        return self._stamps[key], key

    def missing_topics(self) -> tuple:
        """The topics of the parts that never came (spec order): no state can be complete, and
        ``latest`` has none, before each has sent a message."""
        return tuple(t for t, fs in self.by_topic.items()
                     if any(f.key not in self._stamps for f in fs))

    def newest_stamp(self) -> float | None:
        """The stamp of the newest part received, or None before any."""
        return max(self._stamps.values()) if self._stamps else None

    def latest(self) -> tuple[float, dict] | None:
        """(oldest stamp among the parts, observation from the newest values), or None."""
        if len(self._stamps) < len(self.fields):
            return None
        return min(self._stamps.values()), dict(self._values)
