"""Reading a spec's fields straight from serialized (CDR) messages.

A raw subscription (``create_subscription(..., raw=True)``) hands over the message's bytes;
turning them into an rclpy message object first (every field, the joint names as Python
strings) and then into the spec's arrays costs more than the control step itself at high
rates. ``MessageReader`` reads only what the spec takes, at the offsets the CDR layout puts
them: the header stamp and each field's values, the same arrays ``Spec.extract`` gives (tests
hold the two equal on messages serialized by rclpy).

Supported: the spec's message types (``sensor_msgs/JointState``, ``geometry_msgs/PoseStamped``,
``geometry_msgs/Pose``, ``std_msgs/Float64MultiArray``, ``std_msgs/Float32MultiArray``,
``sensor_msgs/Image``), little-endian plain CDR (what every ROS 2 middleware on x86 and ARM
writes). ``MessageReader.read`` raises ``CdrError`` for anything else (a big-endian stream, a
truncated message), and the caller then takes the slow path.

CDR layout: a 4-byte encapsulation header (``00 01 00 00``: CDR, little endian), then the
fields in order, each aligned to its size relative to the end of the header; a string is a
uint32 length (with the terminating NUL) and the bytes; a sequence a uint32 count and the items.
"""
from __future__ import annotations

import functools
import struct

import numpy as np

from .pairing import STAMP_FORMAT, parse_stamp_label
from .spec import Spec, SpecError, image_pixels, resize_nearest

CDR_LE = (b"\x00\x01", b"\x00\x03")  # CDR and PL_CDR, little endian (options ignored)
_U32 = struct.Struct("<I")
_TIME = struct.Struct("<iI")
_STAMPED = {"sensor_msgs/msg/JointState", "geometry_msgs/msg/PoseStamped",
            "sensor_msgs/msg/Image"}
_JOINT_FIELDS = ("position", "velocity", "effort")
_POSE_ORDER = np.array([0, 1, 2, 6, 3, 4, 5])
_STAMP_FORMAT = STAMP_FORMAT.encode("ascii")  # pairing.stamp_label, as bytes


class CdrError(ValueError):
    """Bytes this reader does not take (the caller deserializes them the usual way)."""


def _align(pos: int, n: int) -> int:
    # positions count from the end of the 4-byte encapsulation header
    return pos + (-(pos - 4) % n)


def _string_end(buf, pos: int) -> int:
    pos = _align(pos, 4)
    (n,) = _U32.unpack_from(buf, pos)
    return pos + 4 + n


_SIZES = {"<f8": 8, "<f4": 4}


def _doubles(buf, pos: int, dtype="<f8") -> tuple[np.ndarray, int]:
    """A sequence of floats at ``pos``: (array, position after it)."""
    pos = _align(pos, 4)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    size = _SIZES[dtype]
    if n:
        pos = _align(pos, size)
    end = pos + n * size
    if end > len(buf):
        raise CdrError("truncated")
    return np.frombuffer(buf, dtype, n, pos), end


class MessageReader:
    """The spec fields of one topic (all of one message type) from its serialized messages."""

    def __init__(self, spec: Spec, fields):
        self.spec = spec
        self.fields = tuple(fields)
        self.type = self.fields[0].type
        if any(f.type != self.type for f in self.fields):
            raise SpecError(f"{self.fields[0].topic}: fields of different types")
        self.stamped = self.type in _STAMPED
        self._names_raw = None  # JointState: the name sequence's bytes last seen, and its index
        self._index: dict = {}

    def read(self, raw) -> tuple[int | None, dict]:
        """(header stamp in ns, or None without a header; {field key: array}). ``CdrError``
        for bytes not taken here; ``SpecError`` for a message that does not fit the spec (as
        ``Spec.extract``)."""
        buf = memoryview(raw).cast("B") if not isinstance(raw, (bytes, bytearray)) else raw
        if len(buf) < 4 or bytes(buf[:2]) not in CDR_LE:
            raise CdrError("not little-endian CDR")
        try:
            return self._read(buf)
        except struct.error:
            raise CdrError("truncated") from None

    def _read(self, buf) -> tuple[int | None, dict]:
        pos = 4
        stamp = None
        if self.stamped:
            sec, nsec = _TIME.unpack_from(buf, pos)
            stamp = sec * 1_000_000_000 + nsec
            pos = _string_end(buf, pos + 8)  # frame_id
        t = self.type
        if t == "sensor_msgs/msg/JointState":
            return stamp, self._joint_state(buf, pos)
        if t in ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/Pose"):
            pos = _align(pos, 8)
            if pos + 56 > len(buf):
                raise CdrError("truncated")
            # x y z, qx qy qz qw -> x y z, qw qx qy qz (fancy indexing: a copy)
            value = np.frombuffer(buf, "<f8", 7, pos)[_POSE_ORDER]
            return stamp, {f.key: value for f in self.fields}
        if t in ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray"):
            pos = _align(pos, 4)
            (dims,) = _U32.unpack_from(buf, pos)
            pos += 4
            for _ in range(dims):  # label, size, stride
                pos = _string_end(buf, pos)
                pos = _align(pos, 4) + 8
            pos = _align(pos, 4) + 4  # data_offset
            data, _ = _doubles(buf, pos, "<f8" if "Float64" in t else "<f4")
            out = {}
            for f in self.fields:
                if data.shape != (f.size,):
                    raise SpecError(f"{f.topic}: expected {f.size} values, got {data.size}")
                out[f.key] = data.astype(np.float64)  # a copy: the buffer is reused
            return stamp, out
        if t == "sensor_msgs/msg/Image":
            return stamp, self._image(buf, pos)
        raise CdrError(f"{t} is not read here")

    def _joint_state(self, buf, pos: int) -> dict:
        pos = _align(pos, 4)
        start = pos
        known = self._names_raw
        if known is not None and buf[start:start + len(known)] == known:
            # the names of the message before (a driver sends the same every time): their
            # bytes compared whole, not walked name by name
            names_raw = known
            pos = start + len(known)
            n = self._n
        else:
            (n,) = _U32.unpack_from(buf, pos)
            pos += 4
            for _ in range(n):
                pos = _string_end(buf, pos)
            names_raw = bytes(buf[start:pos])
        if names_raw is not known:
            names = _names(buf, start)
            self._index = {}
            for f in self.fields:
                missing = [j for j in f.joints if j not in names]
                if missing:
                    raise SpecError(f"{f.topic}: joints {missing} missing from the message "
                                    f"(it has {names})")
                self._index[f.key] = np.array([names.index(j) for j in f.joints])
            self._names_raw = names_raw
            self._n = n
        arrays = {}
        for name in _JOINT_FIELDS:
            arrays[name], pos = _doubles(buf, pos)
        out = {}
        for f in self.fields:
            values = arrays[f.field]
            if len(values) != self._n:
                raise SpecError(f"{f.topic}: {self._n} joint names but {len(values)} {f.field} "
                                "values")
            out[f.key] = values[self._index[f.key]]  # fancy indexing: a copy
        return out

    def _image(self, buf, pos: int) -> dict:
        pos = _align(pos, 4)
        h, w = struct.unpack_from("<II", buf, pos)
        end = _string_end(buf, pos + 8)
        encoding = bytes(buf[pos + 12:end - 1]).decode("ascii", "replace")
        pos = end + 1  # is_bigendian
        pos = _align(pos, 4)
        (step,) = _U32.unpack_from(buf, pos)
        (n,) = _U32.unpack_from(buf, pos + 4)
        data = np.frombuffer(buf, np.uint8, min(n, len(buf) - pos - 8), pos + 8)
        img = image_pixels(data, h, w, step, encoding)
        out = {}
        for f in self.fields:
            out[f.key] = resize_nearest(img, f.image["width"], f.image["height"],
                                        f.image["encoding"])
        return out


def _names(buf, pos: int) -> list:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    names = []
    for _ in range(n):
        pos = _align(pos, 4)
        (k,) = _U32.unpack_from(buf, pos)
        names.append(bytes(buf[pos + 4:pos + 4 + k - 1]).decode("utf-8"))
        pos += 4 + k
    return names


def readers(spec: Spec, fields=None) -> dict:
    """{topic: MessageReader} for ``fields`` (default: the spec's observations)."""
    by_topic: dict = {}
    for f in (fields if fields is not None else spec.observations):
        by_topic.setdefault(f.topic, []).append(f)
    return {topic: MessageReader(spec, fs) for topic, fs in by_topic.items()}


def _layout(buf, first_stamp: bool = False) -> tuple[int | None, int]:
    """The layout of a serialized ``Float64MultiArray`` (or ``Float32MultiArray``): (the stamp
    its first ``stamp=`` label names, or None; the position after its dimensions). With
    ``first_stamp`` it stops at that label (the position is then not the layout's end).
    ``CdrError`` or ``struct.error`` for bytes cut short."""
    (count,) = _U32.unpack_from(buf, 4)
    pos, stamp = 8, None
    for _ in range(count):
        (n,) = _U32.unpack_from(buf, pos)
        if n == 0 or pos + 4 + n > len(buf):
            raise CdrError("truncated")
        if stamp is None:
            stamp = parse_stamp_label(
                bytes(buf[pos + 4:pos + 3 + n]).decode("utf-8", "replace"))
            if stamp is not None and first_stamp:
                return stamp, pos
        pos = _align(pos + 4 + n, 4) + 8  # the dimension's size and stride
    return stamp, pos


def answer_stamp(buf, headed: bool = False) -> int | None:
    """The state a serialized command names (``pairing``), in ns: a ``Float64MultiArray``'s (or
    ``Float32MultiArray``'s) layout label ``stamp=<sec>.<nanosec>``, or with ``headed`` the
    header stamp (a ``JointTrajectory``; 0 names none). None when it names none, or for bytes
    that are not little-endian CDR or are cut short. Reads the layout only, never the data."""
    if len(buf) < 8 or bytes(buf[:2]) not in CDR_LE:
        return None
    try:
        if headed:
            sec, nsec = _TIME.unpack_from(buf, 4)
            return sec * 1_000_000_000 + nsec or None
        return _layout(buf, first_stamp=True)[0]
    except (struct.error, CdrError):
        return None


def multi_array(buf) -> tuple[int | None, np.ndarray]:
    """A serialized ``std_msgs/Float64MultiArray`` (a command): (the state it names, as
    ``answer_stamp``, or None; its data, float64). ``CdrError`` for bytes that are not
    little-endian CDR or are cut short (the caller deserializes them the usual way)."""
    if len(buf) < 12:
        raise CdrError("truncated")
    if bytes(buf[:2]) not in CDR_LE:
        raise CdrError("not little-endian CDR")
    try:
        stamp, pos = _layout(buf)
        data, _ = _doubles(buf, pos + 4)  # after data_offset
    except struct.error:
        raise CdrError("truncated") from None
    return stamp, data


def float64_multi_array(values, label: str | None = None) -> bytes:
    """The CDR bytes rclpy serializes for a ``std_msgs/Float64MultiArray`` of ``values`` whose
    layout has one dimension labelled ``label`` (size and stride the number of values), or no
    dimension (None): what ``nodes.common.answer`` fills, for a raw publish."""
    data = np.ascontiguousarray(values, dtype="<f8")
    n = data.size
    if label is not None and n:  # a command: its fixed part packed at once (the hot path)
        text = label.encode("utf-8")
        return _labelled_head(len(text)).pack(b"\x00\x01\x00\x00", 1, len(text) + 1, text,
                                              n, n, 0, n) + data.tobytes()
    out = bytearray(b"\x00\x01\x00\x00")
    if label is None:
        out += _U32.pack(0)
    else:
        text = label.encode("utf-8") + b"\x00"
        out += _U32.pack(1) + _U32.pack(len(text)) + text
        out += b"\x00" * (-(len(out) - 4) % 4)
        out += struct.pack("<II", n, n)
    out += _U32.pack(0)  # data_offset
    out += _U32.pack(n)
    if n:
        out += b"\x00" * (-(len(out) - 4) % 8)
        out += data.tobytes()
    return bytes(out)


class CommandWriter:
    """The serialized commands answering one state, one ``std_msgs/Float64MultiArray`` per
    action: the bytes ``float64_multi_array(action[a:b], stamp_label(stamp))`` gives for each
    ``(a, b)`` of ``slices``, made with the label formatted once for them all (the policy
    node's hot path: a raw publish each)."""

    __slots__ = ("_slices",)

    def __init__(self, slices):
        self._slices = tuple((int(a), int(b), int(b) - int(a)) for a, b in slices)

    def write(self, action: np.ndarray, stamp: int) -> list:
        """[bytes] per slice, for ``action`` (float64) answering the state stamped ``stamp``
        (integer nanoseconds, ``pairing.stamp_of``)."""
        text = _STAMP_FORMAT % divmod(stamp, 1_000_000_000)
        head = _labelled_head(len(text))
        data = np.ascontiguousarray(action, dtype="<f8")
        return [head.pack(b"\x00\x01\x00\x00", 1, len(text) + 1, text, n, n, 0, n) +
                data[a:b].tobytes() for a, b, n in self._slices]


@functools.lru_cache(maxsize=32)
def _labelled_head(text_len: int) -> struct.Struct:
    """Everything of a one-dimension ``Float64MultiArray`` before its doubles, for a label of
    ``text_len`` bytes: encapsulation, dimension count, label (NUL-terminated, padded), size,
    stride, data_offset, value count, padding to the doubles' alignment."""
    pos = 12 + text_len + 1
    pad = -(pos - 4) % 4
    pad8 = -(pos + pad + 16 - 4) % 8
    return struct.Struct(f"<4sII{text_len + 1}s{pad}xIIII{pad8}x")


def _cdr_string(out: bytearray, text: bytes) -> None:
    out += b"\x00" * (-(len(out) - 4) % 4)
    out += _U32.pack(len(text) + 1) + text + b"\x00"


def _cdr_doubles(out: bytearray, values: np.ndarray) -> None:
    out += b"\x00" * (-(len(out) - 4) % 4)
    out += _U32.pack(len(values))
    if len(values):
        out += b"\x00" * (-(len(out) - 4) % 8)
        out += values.tobytes()


class StateWriter:
    """The bridge's state messages as CDR bytes for a raw publish, their constant parts
    (frame, joint names) serialized once: ``joint_state``, ``pose_stamped`` and ``clock``
    deserialize (rclpy) to the messages the bridge filled before."""

    def __init__(self, joint_names=(), frame_id: str = ""):
        names = bytearray(b"\x00\x01\x00\x00" + bytes(8))  # header stamp placeholder
        _cdr_string(names, b"")  # JointState's frame_id: empty, as the bridge leaves it
        names += b"\x00" * (-(len(names) - 4) % 4)
        names += _U32.pack(len(joint_names))
        for j in joint_names:
            _cdr_string(names, j.encode("utf-8"))
        self._joints_prefix = bytes(names[12:])  # after encapsulation + stamp
        pose = bytearray(b"\x00\x01\x00\x00" + bytes(8))
        _cdr_string(pose, frame_id.encode("utf-8"))
        pose += b"\x00" * (-(len(pose) - 4) % 8)
        self._pose_prefix = bytes(pose[12:])

    @staticmethod
    def clock(sec: int, nanosec: int) -> bytes:
        """``rosgraph_msgs/Clock``."""
        return b"\x00\x01\x00\x00" + _TIME.pack(sec, nanosec)

    def joint_state(self, sec: int, nanosec: int, position, velocity, effort) -> bytes:
        """``sensor_msgs/JointState`` of the joints given at construction."""
        out = bytearray(b"\x00\x01\x00\x00" + _TIME.pack(sec, nanosec) + self._joints_prefix)
        for values in (position, velocity, effort):
            _cdr_doubles(out, np.ascontiguousarray(values, dtype="<f8"))
        return bytes(out)

    def pose_stamped(self, sec: int, nanosec: int, pose) -> bytes:
        """``geometry_msgs/PoseStamped`` of ``pose`` = (x, y, z, qw, qx, qy, qz)."""
        p = np.asarray(pose, dtype="<f8")
        return (b"\x00\x01\x00\x00" + _TIME.pack(sec, nanosec) + self._pose_prefix
                + p[[0, 1, 2, 4, 5, 6, 3]].tobytes())


def diagnostic_array(sec: int, nanosec: int, level: int, name: str, message: str,
                     hardware_id: str, values) -> bytes:
    """``diagnostic_msgs/DiagnosticArray`` of one ``DiagnosticStatus`` (``values``: (key,
    value) pairs), as CDR bytes for a raw publish (the bridge's episode status)."""
    out = bytearray(b"\x00\x01\x00\x00" + _TIME.pack(sec, nanosec))
    _cdr_string(out, b"")  # header.frame_id
    out += b"\x00" * (-(len(out) - 4) % 4)
    out += _U32.pack(1) + bytes([level])
    for text in (name, message, hardware_id):
        _cdr_string(out, text.encode("utf-8"))
    out += b"\x00" * (-(len(out) - 4) % 4)
    out += _U32.pack(len(values))
    for key, value in values:
        _cdr_string(out, key.encode("utf-8"))
        _cdr_string(out, value.encode("utf-8"))
    return bytes(out)


def status_episode(buf) -> tuple[int, str | None]:
    """(header stamp in ns, the first ``episode`` key's value or None) of a
    ``diagnostic_msgs/DiagnosticArray`` in CDR bytes (the bridge's episode status, one with
    each state): what a node pairing states with their episode reads, without building the
    message (nested statuses and key-value pairs, each a Python object, every tick).
    ``CdrError`` for bytes it does not take (the caller deserializes them)."""
    if len(buf) < 12:
        raise CdrError("truncated")
    if bytes(buf[:2]) != b"\x00\x01":
        raise CdrError("not little-endian CDR")
    try:
        sec, nanosec = _TIME.unpack_from(buf, 4)
        pos = _string_end(buf, 12)  # header.frame_id
        pos = _align(pos, 4)
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        for _ in range(count):
            pos += 1  # level
            for _ in range(3):  # name, message, hardware_id
                pos = _string_end(buf, pos)
            pos = _align(pos, 4)
            (n,) = _U32.unpack_from(buf, pos)
            pos += 4
            for _ in range(n):
                key_end = _string_end(buf, pos)
                value_end = _string_end(buf, key_end)
                if value_end > len(buf):
                    raise CdrError("truncated")
                if bytes(buf[_align(pos, 4) + 4:key_end - 1]) == b"episode":
                    value = bytes(buf[_align(key_end, 4) + 4:value_end - 1])
                    return sec * 1_000_000_000 + nanosec, value.decode("utf-8")
                pos = value_end
    except struct.error:
        raise CdrError("truncated") from None
    except UnicodeDecodeError:
        raise CdrError("an episode that is not UTF-8") from None
    return sec * 1_000_000_000 + nanosec, None
