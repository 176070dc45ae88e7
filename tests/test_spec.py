"""The observation/action spec and the observation assembler built on it (no ROS graph)."""
import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from robot_imitation.observation import ObservationAssembler
from robot_imitation.spec import Spec, SpecError, decode_image

SMALL = {
    "name": "t", "control_rate": 10,
    "observations": [
        {"key": "q", "topic": "/js", "type": "sensor_msgs/JointState", "field": "position",
         "joints": ["a", "b", "c"]},
        {"key": "ee", "topic": "/ee", "type": "geometry_msgs/msg/PoseStamped", "field": "pose"},
    ],
    "actions": [{"key": "u", "topic": "/cmd", "type": "std_msgs/msg/Float64MultiArray",
                 "field": "data", "size": 2}],
}


def joint_state(stamp, names, pos):
    msg = JointState(name=names, position=pos, velocity=[0.0] * len(pos))
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(round(stamp % 1 * 1e9))
    return msg


def pose(stamp, xyz):
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(round(stamp % 1 * 1e9))
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = xyz
    msg.pose.orientation.w = 1.0
    return msg


@pytest.mark.parametrize("name", ["reach", "push", "push_image"])
def test_builtin_specs_load(name):
    spec = Spec.load(name)
    assert spec.action_dim == 8
    assert spec.topics()["/joint_states"] == "sensor_msgs/msg/JointState"
    assert len(spec.fingerprint()) == 16


def test_fingerprint_changes_with_meaning():
    a = Spec.from_dict(SMALL)
    changed = dict(SMALL, observations=[dict(SMALL["observations"][0], joints=["c", "b", "a"]),
                                        SMALL["observations"][1]])
    assert a.fingerprint() == Spec.from_dict(SMALL).fingerprint()
    assert a.fingerprint() != Spec.from_dict(changed).fingerprint()


@pytest.mark.parametrize("bad, match", [
    ({"observations": [{"key": "q", "topic": "/js", "type": "sensor_msgs/msg/JointState",
                        "field": "position"}]}, "by joint name"),
    ({"actions": [{"key": "u", "topic": "cmd", "type": "std_msgs/msg/Float64MultiArray",
                   "field": "data", "size": 2}]}, "must be absolute"),
    ({"actions": [{"key": "u", "topic": "/cmd", "type": "nav_msgs/msg/Odometry",
                   "field": "pose"}]}, "not supported"),
    ({"actions": [{"key": "q", "topic": "/cmd", "type": "std_msgs/msg/Float64MultiArray",
                   "field": "data", "size": 2}]}, "unique"),
])
def test_bad_specs_are_refused(bad, match):
    with pytest.raises(SpecError, match=match):
        Spec.from_dict(dict(SMALL, **bad))


def test_extract_by_joint_name_and_size_checks():
    spec = Spec.from_dict(SMALL)
    q, _ee = spec.observations
    np.testing.assert_array_equal(
        spec.extract(q, joint_state(0, ["c", "x", "a", "b"], [3.0, 9.0, 1.0, 2.0])), [1, 2, 3])
    with pytest.raises(SpecError, match=r"joints \['c'\] missing"):
        spec.extract(q, joint_state(0, ["a", "b"], [1.0, 2.0]))
    with pytest.raises(SpecError, match="expected 2 values, got 3"):
        spec.extract(spec.actions[0], Float64MultiArray(data=[1.0, 2.0, 3.0]))


def test_assembler_pairs_parts_of_one_instant():
    spec = Spec.from_dict(SMALL)
    asm = ObservationAssembler(spec)
    asm.on_message("/js", joint_state(1.0, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    assert asm.synchronized() is None  # the pose of that instant has not arrived
    asm.on_message("/ee", pose(0.5, (1, 2, 3)))
    assert asm.synchronized() is None  # a pose from another instant
    asm.on_message("/ee", pose(1.0, (1, 2, 3)))
    stamp, obs = asm.synchronized()
    assert stamp == 1.0
    np.testing.assert_array_equal(obs["q"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(obs["ee"], [1, 2, 3, 1, 0, 0, 0])
    assert asm.synchronized() is None  # each instant is handed out once


def image(w, h, enc, pixels):
    msg = Image(width=w, height=h, encoding=enc, step=w * pixels.shape[2])
    msg.data = pixels.tobytes()
    return msg


def test_decode_image_encodings_and_resize():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    out = decode_image(image(6, 4, "rgb8", rgb), 6, 4, "rgb8")
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(decode_image(image(6, 4, "bgr8", rgb[..., ::-1].copy()),
                                               6, 4, "rgb8"), rgb)
    small = decode_image(image(6, 4, "rgb8", rgb), 3, 2, "rgb8")
    np.testing.assert_array_equal(small, rgb[::2, ::2])
    assert decode_image(image(6, 4, "rgb8", rgb), 6, 4, "mono8").shape == (4, 6, 1)
    short = image(6, 4, "rgb8", rgb)
    short.data = rgb.tobytes()[:-10]
    with pytest.raises(SpecError, match="needs 72 bytes"):
        decode_image(short, 6, 4, "rgb8")
