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


@pytest.mark.parametrize("name", ["reach", "push", "push_image", "push_obstacle"])
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
    # taken before: every build, training run and export then failed with a traceback, or
    # kept a step a minute (1e-300 Hz), or none
    ({"actions": []}, "actions must list at least one field"),
    ({"observations": []}, "observations must list at least one field"),
    ({"control_rate": float("inf")}, r"control_rate must be in \[0.01, 10000\] Hz, got inf"),
    ({"control_rate": 1e-300}, r"control_rate must be in \[0.01, 10000\] Hz, got 1e-300"),
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


def test_assembler_says_when_the_state_it_handed_out_comes_again_whole():
    """A lockstep bridge publishes a state again when no answer reached it; a controller that
    answered it answers again once the state came again whole (a part is no repetition), once
    per repetition, and never for a state it has not handed out."""
    spec = Spec.from_dict(SMALL)
    asm = ObservationAssembler(spec)
    asm.on_message("/js", joint_state(1.0, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    asm.on_message("/ee", pose(1.0, (1, 2, 3)))
    assert asm.repeated() is None  # not handed out yet
    assert asm.synchronized()[0] == 1.0
    assert asm.repeated() is None
    asm.on_message("/ee", pose(1.0, (1, 2, 3)))
    assert asm.repeated() is None  # a part again
    asm.on_message("/js", joint_state(1.0, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    assert asm.repeated() == 1.0 and asm.synchronized() is None
    assert asm.repeated() is None  # once per repetition
    asm.on_message("/js", joint_state(1.0, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    asm.on_message("/ee", pose(1.05, (1, 2, 3)))  # the next state's part came in between
    assert asm.repeated() is None
    asm.on_message("/js", joint_state(1.05, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    assert asm.synchronized()[0] == 1.05 and asm.repeated() is None


def test_assembler_names_the_oldest_part_that_holds_the_states_back():
    """A topic gone silent keeps every state from completing; the watchdog of a controller
    answering states reads its age from the oldest part, not the newest message."""
    spec = Spec.from_dict(SMALL)
    asm = ObservationAssembler(spec)
    assert asm.missing_topics() == ("/js", "/ee")
    asm.on_message("/js", joint_state(1.0, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    assert asm.oldest_part() is None  # not every part yet
    assert asm.missing_topics() == ("/ee",)  # the topic to name while nothing can be answered
    asm.on_message("/ee", pose(1.0, (1, 2, 3)))
    assert asm.missing_topics() == ()
    for t in (1.1, 1.2, 1.3):  # the joint states go on, the pose does not
        asm.on_message("/js", joint_state(t, ["c", "a", "b"], [3.0, 1.0, 2.0]))
    assert asm.oldest_part() == (1.0, "ee") and asm.newest_stamp() == 1.3
    assert asm.complete() is False


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


@pytest.mark.parametrize("src, dst", [((240, 320), (96, 96)), ((7, 5), (3, 4)),
                                      ((4, 6), (9, 13))])
def test_resize_takes_each_pixel_from_the_nearest_source_pixel(src, dst):
    """Pixel (i, j) of the result is source pixel (i*h//height, j*w//width), whatever the
    ratio (not a whole number, or a larger image), for rows padded past their pixels (a
    message's step), and after a conversion to mono."""
    from robot_imitation.spec import image_pixels, resize_nearest

    (h, w), (height, width) = src, dst
    step = w * 3 + 5  # padded rows: the pixels are a strided view of the message's bytes
    data = np.random.default_rng(1).integers(0, 256, step * h, dtype=np.uint8)
    img = image_pixels(data, h, w, step, "rgb8")
    out = resize_nearest(img, width, height, "rgb8")
    assert out.shape == (height, width, 3) and out.flags.c_contiguous
    for i in range(height):
        for j in range(width):
            y, x = i * h // height, j * w // width
            assert out[i, j].tolist() == data[y * step + 3 * x: y * step + 3 * x + 3].tolist()
    mono = resize_nearest(img, width, height, "mono8")
    expected = (img @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    rows, cols = np.arange(height) * h // height, np.arange(width) * w // width
    np.testing.assert_array_equal(mono[..., 0], expected[rows][:, cols])


# ---------------------------------------------------------------------- derived features
FEATURED = dict(SMALL, features=[{"key": "ee_from_q", "op": "difference",
                                  "inputs": ["ee", "q"], "size": 3}])


@pytest.mark.parametrize("feature, match", [
    ({"key": "f", "op": "sum", "inputs": ["ee", "q"]}, "unknown op"),
    ({"key": "f", "op": "difference", "inputs": ["ee", "nope"]}, r"inputs \['nope'\]"),
    ({"key": "f", "op": "difference", "inputs": ["ee"]}, "two inputs"),
    ({"key": "f", "op": "difference", "inputs": ["ee", "q"], "size": 4}, "size 4 must be 1..3"),
    ({"key": "q", "op": "difference", "inputs": ["ee", "q"]}, "unique"),
])
def test_bad_features_are_refused(feature, match):
    with pytest.raises(SpecError, match=match):
        Spec.from_dict(dict(SMALL, features=[feature]))


def test_features_are_part_of_the_fingerprint_and_absent_ones_change_nothing():
    plain, featured = Spec.from_dict(SMALL), Spec.from_dict(FEATURED)
    assert "features" not in plain.to_dict()  # specs without features keep their fingerprint
    assert plain.fingerprint() != featured.fingerprint()
    assert Spec.from_dict(featured.to_dict()).fingerprint() == featured.fingerprint()
    assert [f.key for f in featured.policy_inputs] == ["q", "ee", "ee_from_q"]


def test_the_policy_computes_the_specs_features():
    """The network's input is the spec's derive() of the raw observations, normalized: the
    statistics (computed with derive on NumPy) and the policy (torch) cannot disagree."""
    import torch

    from robot_imitation.learning.checkpoint import spec_mismatch
    from robot_imitation.learning.policies import Policy
    from robot_imitation.learning.trainer import TrainConfig, policy_config

    spec = Spec.from_dict(FEATURED)
    policy = Policy(policy_config(spec, TrainConfig()))
    rng = np.random.default_rng(0)
    obs = {"q": rng.normal(size=(6, 3)), "ee": rng.normal(size=(6, 7))}
    derived = spec.derive(obs)
    np.testing.assert_allclose(derived["ee_from_q"], obs["ee"][:, :3] - obs["q"])
    shift, scale = rng.normal(size=13), rng.uniform(0.5, 2, size=13)
    policy.obs_norm.set(shift, scale)
    got = policy.features({k: torch.as_tensor(v) for k, v in obs.items()}).double().numpy()
    flat = np.concatenate([derived[f.key] for f in spec.policy_inputs], axis=1)
    np.testing.assert_allclose(got, (flat - shift) / scale, rtol=1e-5, atol=1e-5)
    # a runtime spec without the feature is named as a mismatch
    assert spec_mismatch(spec, Spec.from_dict(SMALL)) == ["feature 'ee_from_q' is missing at "
                                                          "runtime"]


# ---------------------------------------------------------------------- unknown keys
def with_change(path: tuple, value) -> dict:
    """SMALL (with a feature) deep-copied, ``value`` set at ``path`` (keys and indices)."""
    import copy

    data = copy.deepcopy(dict(FEATURED, normalization={"observations": "mean_std",
                                                       "actions": "min_max"},
                              record_also=[{"topic": "/clock", "type": "rosgraph_msgs/msg/Clock"}]))
    data["observations"].append({"key": "cam", "topic": "/cam", "type": "sensor_msgs/msg/Image",
                                 "field": "image",
                                 "image": {"width": 8, "height": 6, "encoding": "rgb8"}})
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    (("normalisation",), {"actions": "min_max"},
     "unknown key 'normalisation' in the spec: did you mean 'normalization'?"),
    (("actions", 0, "relative_too"), "q",
     "unknown key 'relative_too' in actions[0] (u): did you mean 'relative_to'?"),
    (("observations", 1, "fields"), "pose",
     "unknown key 'fields' in observations[1] (ee): did you mean 'field'?"),
    (("observations", 2, "image", "widht"), 8,
     "unknown key 'widht' in observations[2] (cam).image: did you mean 'width'?"),
    (("features", 0, "input"), ["ee", "q"],
     "unknown key 'input' in features[0] (ee_from_q): did you mean 'inputs'?"),
    (("record_also", 0, "typ"), "x",
     "unknown key 'typ' in record_also[0]: did you mean 'type'?"),
    (("normalization", "action"), "min_max",
     "unknown key 'action' in normalization: did you mean 'actions'?"),
    (("normalization", "actions"), "minmax",
     "normalization.actions: unknown method 'minmax': did you mean 'min_max'?"),
    (("observations", 0, "relative_to"), "ee",
     "observations[0] (q): relative_to is for actions"),
    (("colour",), "red", "unknown key 'colour' in the spec (known: "),
    # values of the wrong kind: a joint name given as a string was taken letter by letter
    (("observations", 0, "joints"), "a", "observations[0] (q).joints must be a list of strings"),
    (("actions", 0, "size"), "two", "actions[0] (u).size must be an integer, got 'two'"),
    (("observations", 2, "image", "width"), "8", "observations[2] (cam).image.width must be an "
                                                 "integer"),
    (("control_rate",), "fast", "control_rate must be a number, got 'fast'"),
    (("record_also", 0), {"topic": "/clock"}, "record_also[0]: missing ['type']"),
])
def test_unknown_keys_are_errors_naming_key_place_and_the_closest_known_one(path, value,
                                                                            message):
    """A misspelled key used to be ignored: `relative_too` trained absolute actions,
    `normalisation` the default normalization; a different model without a word."""
    with pytest.raises(SpecError) as err:
        Spec.from_dict(with_change(path, value), where="my_spec.yaml")
    assert str(err.value).startswith("my_spec.yaml: ") and message in str(err.value), err.value


def test_existing_specs_and_stored_specs_still_load_with_their_fingerprints():
    """The built-in specs, and Spec.to_dict output (as datasets and checkpoints store it), load
    unchanged: the same fingerprints as before unknown keys were refused."""
    fingerprints = {"reach": "b4d4efe280fab873", "push": "06bfab5b73266614",
                    "push_image": "e5bc96d81c066449", "push_obstacle": "2352818d095eb5fa"}
    for name, fingerprint in fingerprints.items():
        spec = Spec.load(name)
        assert spec.fingerprint() == fingerprint
        assert Spec.from_dict(spec.to_dict()).fingerprint() == fingerprint
    full = Spec.from_dict(with_change(("actions", 0, "relative_to"), "q"))
    assert Spec.from_dict(full.to_dict()) == full
