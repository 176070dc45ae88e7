"""Spec fields read straight from CDR bytes (``cdr.MessageReader``) equal ``Spec.extract`` on
the deserialized message, for messages serialized by rclpy itself."""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension

from robot_imitation.cdr import CdrError, MessageReader, readers
from robot_imitation.spec import FieldSpec, Spec, SpecError, message_stamp

RNG = np.random.default_rng(0)
JOINTS = ("a1", "a2", "a3", "finger")


def field(key, type_, name, **kw) -> FieldSpec:
    return FieldSpec(key=key, topic="/t", type=type_, field=name, **kw)


def same(spec, fields, msg) -> None:
    """The reader's stamp and arrays equal message_stamp and Spec.extract."""
    stamp, values = MessageReader(spec, fields).read(serialize_message(msg))
    want = message_stamp(msg)
    assert (stamp is None) == (want is None)
    if stamp is not None:
        assert stamp == msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    for f in fields:
        expect = spec.extract(f, msg)
        assert values[f.key].dtype == expect.dtype
        np.testing.assert_array_equal(values[f.key], expect)


def joint_state(names, frame="base_link_with_a_long_name", with_effort=True) -> JointState:
    msg = JointState(name=list(names), position=RNG.normal(size=len(names)).tolist(),
                     velocity=RNG.normal(size=len(names)).tolist(),
                     effort=RNG.normal(size=len(names)).tolist() if with_effort else [])
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 345_678_901
    msg.header.frame_id = frame
    return msg


SPEC = Spec.load("push_image")


@pytest.mark.parametrize("frame", ["", "w", "wor", "world", "a_frame_of_odd_length"])
def test_joint_states_in_any_order_with_any_frame(frame):
    fields = [field("pos", "sensor_msgs/msg/JointState", "position", joints=JOINTS),
              field("vel", "sensor_msgs/msg/JointState", "velocity", joints=JOINTS[::-1]),
              field("eff", "sensor_msgs/msg/JointState", "effort", joints=JOINTS[1:])]
    reader = MessageReader(SPEC, fields)
    swapped = (JOINTS[1], JOINTS[0], *JOINTS[2:])  # the same bytes but for the order
    for names in (JOINTS + ("extra",), JOINTS + ("extra",), ("extra", "finger", "a3", "a1", "a2"),
                  JOINTS, JOINTS, swapped, swapped, JOINTS):
        msg = joint_state(names, frame)
        # the name index is cached, and names equal to the last message's are not walked again
        stamp, values = reader.read(serialize_message(msg))
        for f in fields:
            np.testing.assert_array_equal(values[f.key], SPEC.extract(f, msg))
        same(SPEC, fields, msg)


def test_joint_state_errors_are_the_extract_errors():
    f = field("pos", "sensor_msgs/msg/JointState", "position", joints=JOINTS)
    with pytest.raises(SpecError, match=r"joints \['finger'\] missing from the message"):
        MessageReader(SPEC, [f]).read(serialize_message(joint_state(JOINTS[:3])))
    e = field("eff", "sensor_msgs/msg/JointState", "effort", joints=JOINTS)
    with pytest.raises(SpecError, match="4 joint names but 0 effort values"):
        MessageReader(SPEC, [e]).read(serialize_message(joint_state(JOINTS, with_effort=False)))


@pytest.mark.parametrize("frame", ["", "map", "odom_frame"])
def test_poses(frame):
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 7, 1
    msg.header.frame_id = frame
    v = RNG.normal(size=7)
    p, o = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z, o.x, o.y, o.z, o.w = (float(x) for x in v)
    same(SPEC, [field("ee", "geometry_msgs/msg/PoseStamped", "pose")], msg)
    same(SPEC, [field("ee", "geometry_msgs/msg/Pose", "pose")], msg.pose)


@pytest.mark.parametrize("labels", [[], ["s"], ["12.500000000", "x"], ["abc", "de", "f"]])
@pytest.mark.parametrize("cls, type_", [(Float64MultiArray, "std_msgs/msg/Float64MultiArray"),
                                        (Float32MultiArray, "std_msgs/msg/Float32MultiArray")])
def test_arrays_after_any_layout(labels, cls, type_):
    msg = cls(data=RNG.normal(size=7).tolist())
    msg.layout.dim = [MultiArrayDimension(label=lab, size=7, stride=7) for lab in labels]
    msg.layout.data_offset = 3
    same(SPEC, [field("arm", type_, "data", size=7)], msg)
    with pytest.raises(SpecError, match="expected 8 values, got 7"):
        MessageReader(SPEC, [field("arm", type_, "data", size=8)]).read(serialize_message(msg))
    empty = cls(data=[])
    with pytest.raises(SpecError, match="expected 7 values, got 0"):
        MessageReader(SPEC, [field("arm", type_, "data", size=7)]).read(serialize_message(empty))


@pytest.mark.parametrize("encoding, channels", [("rgb8", 3), ("bgr8", 3), ("rgba8", 4),
                                                ("mono8", 1)])
@pytest.mark.parametrize("want", ["rgb8", "mono8"])
@pytest.mark.parametrize("pad", [0, 5])
def test_images_with_padding_and_resizing(encoding, channels, want, pad):
    h, w = 30, 41
    pixels = RNG.integers(0, 256, size=(h, w * channels + pad), dtype=np.uint8)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * channels + pad,
                data=pixels.tobytes())
    msg.header.stamp.sec = 3
    msg.header.frame_id = "cam_optical"
    for size in ((w, h), (16, 12)):
        f = field("img", "sensor_msgs/msg/Image", "image",
                  image={"width": size[0], "height": size[1], "encoding": want})
        same(SPEC, [f], msg)


def test_what_is_not_taken_here():
    f = field("pos", "sensor_msgs/msg/JointState", "position", joints=JOINTS)
    raw = serialize_message(joint_state(JOINTS))
    reader = MessageReader(SPEC, [f])
    with pytest.raises(CdrError, match="truncated"):
        reader.read(raw[: len(raw) - 9])
    with pytest.raises(CdrError, match="little-endian"):
        reader.read(b"\x00\x00" + raw[2:])  # big-endian CDR
    bad = Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32))
    g = field("img", "sensor_msgs/msg/Image", "image",
              image={"width": 4, "height": 4, "encoding": "rgb8"})
    with pytest.raises(SpecError, match="encoding 'yuv422' not supported"):
        MessageReader(SPEC, [g]).read(serialize_message(bad))


def test_every_built_in_spec_is_read():
    """One reader per topic of each built-in spec's observations and actions."""
    for name in ("reach", "push", "push_image", "push_obstacle"):
        spec = Spec.load(name)
        found = readers(spec, spec.fields)
        assert set(found) == {f.topic for f in spec.fields}


def test_the_assembler_gives_the_same_state_from_bytes():
    """``on_raw`` and ``on_message`` hand out the same observation with the same float stamp
    (stamps are compared for equality and name the state a command answers)."""
    from robot_imitation.observation import ObservationAssembler

    spec = Spec.load("push")
    by_msg, by_raw = ObservationAssembler(spec), ObservationAssembler(spec)
    for k in range(50):
        sec, nsec = 100 + k // 20, (k * 50_000_000 + 7) % 1_000_000_000
        for topic in by_msg.topics:
            if topic == "/joint_states":
                msg = joint_state(spec.observations[0].joints)
            else:
                msg = PoseStamped()
                msg.pose.position.x = float(RNG.normal())
                msg.pose.orientation.w = 1.0
            msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
            by_msg.on_message(topic, msg)
            by_raw.on_raw(topic, serialize_message(msg))
        a, b = by_msg.synchronized(), by_raw.synchronized()
        assert a is not None and b is not None
        assert a[0] == b[0]  # the very same float
        assert a[1].keys() == b[1].keys()
        for key in a[1]:
            np.testing.assert_array_equal(a[1][key], b[1][key])


@pytest.mark.parametrize("label", [None, "", "ab", "5.000000000", "12345.678901234", "a" * 13])
@pytest.mark.parametrize("n", [0, 1, 7, 8])
def test_commands_serialized_as_rclpy_does(label, n):
    """The raw command bytes deserialize (rclpy) to the ``answer`` message of the same values
    and label, and rclpy's own bytes of it differ only in padding (unspecified in CDR)."""
    from rclpy.serialization import deserialize_message

    from robot_imitation.cdr import float64_multi_array

    values = RNG.normal(size=n)
    msg = Float64MultiArray(data=values.tolist())
    if label is not None:
        msg.layout.dim = [MultiArrayDimension(label=label, size=n, stride=n)]
    raw = float64_multi_array(values, label)
    assert deserialize_message(raw, Float64MultiArray) == msg
    theirs = serialize_message(msg)
    assert len(theirs) - len(raw) in (0, 1, 2, 3, 4)  # rclpy rounds the length up to 4 bytes
    meaningful = np.frombuffer(raw, np.uint8) != 0
    assert np.array_equal(np.frombuffer(theirs[:len(raw)], np.uint8)[meaningful],
                          np.frombuffer(raw, np.uint8)[meaningful])


@pytest.mark.parametrize("stamp", [0, 7, 1_500_000_000, 123_456_789_012, 1_796_490_651_406_985_744])
def test_a_states_commands_written_at_once_as_one_by_one(stamp):
    """``CommandWriter`` (the policy node's answer to a state) gives, for each action's slice,
    the bytes of ``float64_multi_array`` with the state's ``stamp_label``, which rclpy reads
    back as the command with that label: the label's seconds of any width, nanoseconds to 9
    digits."""
    from rclpy.serialization import deserialize_message

    from robot_imitation.cdr import CommandWriter, float64_multi_array
    from robot_imitation.nodes.common import answer
    from robot_imitation.pairing import stamp_label

    action = RNG.normal(size=8)
    slices = [(0, 7), (7, 8)]
    raws = CommandWriter(slices).write(action, stamp)
    assert len(raws) == 2
    for raw, (a, b) in zip(raws, slices):
        assert raw == float64_multi_array(action[a:b], stamp_label(stamp))
        msg = answer(action[a:b])
        msg.layout.dim = [MultiArrayDimension(label=stamp_label(stamp), size=b - a, stride=b - a)]
        assert deserialize_message(raw, Float64MultiArray) == msg


@pytest.mark.parametrize("frame", ["", "w", "world", "odom_frame"])
def test_state_messages_written_as_rclpy_reads_them(frame):
    """The bridge's raw state messages deserialize to the messages it filled before."""
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock

    from robot_imitation.cdr import StateWriter

    names = ["panda_joint1", "j2", "a_longer_joint_name"]
    writer = StateWriter(names, frame)
    q, qd, eff = RNG.normal(size=3), RNG.normal(size=3), RNG.normal(size=3)
    got = deserialize_message(writer.joint_state(5, 250_000_000, q, qd, eff), JointState)
    want = JointState(name=names, position=q.tolist(), velocity=qd.tolist(),
                      effort=eff.tolist())
    want.header.stamp.sec, want.header.stamp.nanosec = 5, 250_000_000
    assert got == want
    v = RNG.normal(size=7)
    got = deserialize_message(writer.pose_stamped(7, 3, v), PoseStamped)
    want = PoseStamped()
    want.header.stamp.sec, want.header.stamp.nanosec = 7, 3
    want.header.frame_id = frame
    p, o = want.pose.position, want.pose.orientation
    p.x, p.y, p.z, o.w, o.x, o.y, o.z = (float(x) for x in v)
    assert got == want
    clock = deserialize_message(StateWriter.clock(9, 10), Clock)
    assert (clock.clock.sec, clock.clock.nanosec) == (9, 10)
    # and the reader takes them back
    spec = Spec.load("push")
    stamp, values = MessageReader(spec, [f for f in spec.observations
                                         if f.topic == "/ee_pose"]).read(
        writer.pose_stamped(7, 3, v))
    assert stamp == 7_000_000_003
    np.testing.assert_array_equal(values["ee_pose"], v)


@pytest.mark.parametrize("texts", [("episode", "running", "push"), ("", "", ""),
                                   ("ep", "succeeded", "push_obstacle")])
def test_status_written_as_rclpy_reads_it(texts):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.serialization import deserialize_message

    from robot_imitation.cdr import diagnostic_array

    pairs = [("episode", "3"), ("seed", "1003"), ("tick", "17"), ("success", "false"),
             ("done", "false"), ("reward", "-0.123")]
    raw = diagnostic_array(4, 50_000_000, 2, *texts, pairs)
    want = DiagnosticArray()
    want.header.stamp.sec, want.header.stamp.nanosec = 4, 50_000_000
    status = DiagnosticStatus(level=DiagnosticStatus.ERROR, name=texts[0], message=texts[1],
                              hardware_id=texts[2])
    status.values = [KeyValue(key=k, value=v) for k, v in pairs]
    want.status = [status]
    assert deserialize_message(raw, DiagnosticArray) == want


def test_bytes_no_reader_takes_are_one_error_not_a_crash():
    """A truncated message: the assembler's fallback (rclpy's deserializer) fails too, and the
    node gets the SpecError it logs and refuses, not an exception out of its callback."""
    from robot_imitation.observation import ObservationAssembler

    spec = Spec.load("push")
    raw = serialize_message(joint_state(spec.observations[0].joints))
    with pytest.raises(SpecError, match="/joint_states: a message that cannot be deserialized"):
        ObservationAssembler(spec).on_raw("/joint_states", raw[:len(raw) - 9])


@pytest.mark.parametrize("labels", [[], ["x"], ["stamp=bad"], ["x", "abcde"], ["abc", "s"],
                                    ["y" * 7, "stamp=3.000000005"], ["stamp=12.345678901", "z"]])
@pytest.mark.parametrize("cls", [Float64MultiArray, Float32MultiArray])
def test_the_state_a_serialized_command_names(labels, cls):
    """``answer_stamp`` on rclpy's bytes equals ``pairing.layout_stamp`` on the message, for any
    layout (labels of every length around the 4-byte alignment), whatever the data; cut short
    or not CDR, it names nothing."""
    from trajectory_msgs.msg import JointTrajectory

    from robot_imitation.cdr import answer_stamp
    from robot_imitation.pairing import layout_stamp

    msg = cls(data=RNG.normal(size=3).tolist())
    msg.layout.dim = [MultiArrayDimension(label=text, size=3, stride=3) for text in labels]
    raw = serialize_message(msg)
    assert answer_stamp(raw) == layout_stamp(msg.layout)
    if layout_stamp(msg.layout) is not None:
        assert answer_stamp(raw[:raw.index(b"stamp=") + 8]) is None  # the label cut
    assert answer_stamp(b"\x00\x00" + raw[2:]) is None  # big endian: not read here
    traj = JointTrajectory()
    traj.header.stamp.sec, traj.header.stamp.nanosec = 4, 20
    assert answer_stamp(serialize_message(traj), headed=True) == 4_000_000_020
    assert answer_stamp(serialize_message(JointTrajectory()), headed=True) is None


@pytest.mark.parametrize("labels", [[], ["x"], ["stamp=bad"], ["x", "abcde"], ["abc", "s"],
                                    ["y" * 7, "stamp=3.000000005"], ["stamp=12.345678901", "z"]])
@pytest.mark.parametrize("size", [0, 1, 7])
def test_a_serialized_command_read_as_the_bridge_reads_it(labels, size):
    """``multi_array`` (the bridge's raw command subscriptions) on rclpy's bytes gives the stamp
    ``layout_stamp`` gives and the message's data, bit for bit; bytes cut short or not
    little-endian CDR are refused (``CdrError``: the bridge deserializes them instead)."""
    from robot_imitation.cdr import CdrError, multi_array
    from robot_imitation.pairing import layout_stamp

    msg = Float64MultiArray(data=RNG.normal(size=size).tolist())
    msg.layout.dim = [MultiArrayDimension(label=text, size=size, stride=size) for text in labels]
    raw = serialize_message(msg)
    stamp, data = multi_array(raw)
    assert stamp == layout_stamp(msg.layout)
    assert data.dtype == np.float64 and data.tolist() == list(msg.data)
    for bad in ([raw[:len(raw) - 8]] if size else []) + [raw[:10], b"\x00\x00" + raw[2:]]:
        with pytest.raises(CdrError):
            multi_array(bad)


def test_the_episode_status_is_read_from_its_bytes_as_rclpy_writes_them():
    """The expert node reads each state's episode status from its CDR bytes (stamp and the
    ``episode`` value): equal to the message's, for messages rclpy serializes (the bridge's,
    other publishers' with several statuses, none, other keys, odd string lengths)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.serialization import deserialize_message

    from robot_imitation.cdr import diagnostic_array, status_episode
    from robot_imitation.nodes.common import episode_of_status

    def status(sec, nanosec, frame, statuses):
        msg = DiagnosticArray(status=[DiagnosticStatus(
            level=bytes([level]), name=name, message=text, hardware_id=hw,
            values=[KeyValue(key=k, value=v) for k, v in values])
            for level, name, text, hw, values in statuses])
        msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, frame
        return serialize_message(msg)

    cases = [
        (status(3, 5, "", [(0, "episode", "ok", "push", [("episode", "12"), ("seed", "4")])]),
         (3_000_000_005, "12")),
        (status(7, 999_999_999, "map", [(1, "a", "bb", "ccc", [("x", "1")]),
                                         (0, "episode", "", "", [("tick", "9"),
                                                                  ("episode", "seed_40")])]),
         (7_999_999_999, "seed_40")),
        (status(1, 2, "odd", [(2, "n", "m", "h", [("episodes", "3")])]), (1_000_000_002, None)),
        (status(0, 0, "", []), (0, None)),
    ]
    for raw, expected in cases:
        assert status_episode(raw) == expected
        assert episode_of_status(raw) == expected
    ours = diagnostic_array(4, 6, 0, "episode", "success", "push",
                            (("episode", "2"), ("seed", "1"), ("done", "true")))
    msg = deserialize_message(ours, DiagnosticArray)
    assert status_episode(ours) == (4_000_000_006, msg.status[0].values[0].value) == \
        (4_000_000_006, "2")
    with pytest.raises(CdrError):
        status_episode(ours[:30])  # truncated: the node deserializes (and rclpy refuses) it
    big_endian = b"\x00\x00" + bytes(ours[2:])
    with pytest.raises(CdrError):
        status_episode(big_endian)
