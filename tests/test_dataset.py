"""The dataset builder on real episode bags.

The bags are rosbag2 MCAP files (version 9) written with rosbags' ``Writer`` from simulated
``push`` rollouts of the scripted expert: per control tick the messages the bridge publishes
(``/clock``, joint states, poses, optionally the camera) and the expert's answer on the arm and
gripper command topics, timed as in lockstep (commands share their state's time) or as in real
time (commands a few ms after their state).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from conftest import expert_answer
from robot_imitation.data.dataset import DatasetError, build_dataset, build_episode
from robot_imitation.data.inspect import dataset_info, format_info, plot_episode
from robot_imitation.sim.env import ImitationEnv
from robot_imitation.sim.experts import make_expert
from robot_imitation.spec import Spec, decode_image

TYPES = get_typestore(Stores.ROS2_KILTED)
M = TYPES.types
SPEC = Spec.load("push")
PERIOD_NS = round(1e9 / SPEC.control_rate)
T0_NS = 5_000_000_000            # simulation time of an episode's first state
WALL_CLOCK_NS = 1_700_000_000 * 10**9
POSE_KEYS = ("ee_pose", "object_pose", "goal_pose")
STATUSES = ["ok", "ok", "recovered", "discarded", "ok", "failed"]   # of the fixture's episodes
USABLE = [0, 1, 4]     # status ok; the recovered one (cut short by a crash) only when asked for


# ===================================================================== rollouts
@dataclass
class Rollout:
    seed: int
    states: list          # observation dicts, one per tick; the last one follows the last action
    actions: list         # the expert's action for each state but the last
    frames: list          # front camera frames, one per state (camera rollouts only)
    success: bool


def run_expert(env, expert, seed: int, max_steps: int = 60, camera: bool = False) -> Rollout:
    obs, _ = env.reset(seed=seed)
    expert.reset()
    states, actions, frames, success = [obs], [], [], False
    while len(actions) < max_steps and not success:
        if camera:
            frames.append(env.render())
        actions.append(expert(obs))
        obs, _, success, truncated, _ = env.step(actions[-1])
        states.append(obs)
        if truncated:
            break
    if camera:
        frames.append(env.render())
    return Rollout(seed, states, actions, frames, bool(success))


@pytest.fixture(scope="module")
def push_env():
    env = ImitationEnv("push")
    yield env, make_expert(env.sim)
    env.close()


@pytest.fixture(scope="module")
def rollouts(push_env):
    env, expert = push_env
    return [run_expert(env, expert, seed) for seed in range(len(STATUSES))]


# ===================================================================== bag writing
def header(stamp_ns: int, frame: str = "world"):
    return M["std_msgs/msg/Header"](
        stamp=M["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        frame_id=frame)


def joint_state_msg(stamp_ns, names, obs):
    return M["sensor_msgs/msg/JointState"](
        header=header(stamp_ns), name=list(names),
        position=np.asarray(obs["joint_pos"], np.float64),
        velocity=np.asarray(obs["joint_vel"], np.float64), effort=np.zeros(len(names)))


def pose_msg(stamp_ns, v):
    pose = M["geometry_msgs/msg/Pose"](
        position=M["geometry_msgs/msg/Point"](x=v[0], y=v[1], z=v[2]),
        orientation=M["geometry_msgs/msg/Quaternion"](x=v[4], y=v[5], z=v[6], w=v[3]))
    return M["geometry_msgs/msg/PoseStamped"](header=header(stamp_ns), pose=pose)


def command_msg(values):
    return M["std_msgs/msg/Float64MultiArray"](
        layout=M["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
        data=np.asarray(values, np.float64))


def image_msg(stamp_ns, frame):
    h, w, _ = frame.shape
    return M["sensor_msgs/msg/Image"](header=header(stamp_ns, "front_optical_frame"), height=h,
                                      width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                                      data=frame.reshape(-1))


def clock_msg(stamp_ns):
    return M["rosgraph_msgs/msg/Clock"](clock=header(stamp_ns).stamp)


def log_times(timing: str, k: int, rng) -> tuple[int, list, int]:
    """(state log time, arm command log times, gripper command log time) of tick k."""
    t = T0_NS + k * PERIOD_NS
    if timing == "lockstep":        # recorder on sim time: the command shares its state's time
        return t, [t], t
    if timing == "realtime":        # states arrive after 1 ms, commands 2..8 ms after the state
        lag = int(rng.integers(2_000_000, 8_000_000))
        return t + 1_000_000, [t + lag], t + lag + 300_000
    if timing == "fast_commands":   # a 100 Hz teleop repeating the command
        return t, [t + j * 10_000_000 for j in range(5)], t
    if timing == "wall_clock":      # recorder on the wall clock, stamps in sim time
        return t + WALL_CLOCK_NS, [t + WALL_CLOCK_NS], t + WALL_CLOCK_NS
    raise ValueError(timing)


def source_msg(name: str):
    return M["std_msgs/msg/String"](data=name)


def write_episode(path: Path, rollout: Rollout, *, timing: str = "lockstep", camera=False,
                  edit=None, joint_names=None, sources=None) -> Path:
    """Write a rollout as the recorder would record it. ``edit(topic, tick, msg)`` may return a
    changed message, or None to leave the message out. ``sources``: the command mux's executed
    source of each tick, published right after the forwarded commands."""
    names = joint_names or push_joint_names()
    rng = np.random.default_rng(rollout.seed)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}

        def write(topic, msg, log_ns, k):
            if edit is not None:
                msg = edit(topic, k, msg)
                if msg is None:
                    return
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=TYPES)
            writer.write(connections[topic], log_ns, TYPES.serialize_cdr(msg, msg.__msgtype__))

        for k, obs in enumerate(rollout.states):
            stamp = T0_NS + k * PERIOD_NS
            state_log, arm_logs, gripper_log = log_times(timing, k, rng)
            write("/clock", clock_msg(stamp), state_log, k)
            write("/joint_states", joint_state_msg(stamp, names, obs), state_log, k)
            for key in POSE_KEYS:
                write(f"/{key}", pose_msg(stamp, obs[key]), state_log, k)
            if camera:
                write("/front/image_raw", image_msg(stamp, rollout.frames[k]), state_log, k)
            if k < len(rollout.actions):
                action = rollout.actions[k]
                for log_ns in arm_logs:
                    write("/arm_controller/commands", command_msg(action[:7]), log_ns, k)
                write("/gripper_controller/commands", command_msg(action[7:]), gripper_log, k)
                if sources is not None:
                    write("/command_mux/source", source_msg(sources[k]), max(arm_logs), k)
    return path


def push_joint_names() -> list:
    return list(SPEC.observations[0].joints)


def write_dataset(root: Path, rollouts: list, statuses: list, spec: Spec = SPEC, **options):
    """A recorder-style dataset: dataset.yaml, index.json, one bag folder per episode."""
    root.mkdir(parents=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(
        {"format": "robot_imitation.dataset", "version": 1, "spec": spec.to_dict()}))
    entries = []
    for i, (rollout, status) in enumerate(zip(rollouts, statuses)):
        name = f"episode_{i:06d}"
        write_episode(root / name, rollout, **options)
        entries.append({"name": name, "path": name, "status": status, "task": "push",
                        "success": rollout.success, "seed": rollout.seed, "operator": "expert",
                        "notes": "", "duration": len(rollout.actions) * PERIOD_NS * 1e-9,
                        "counts": {}})
    (root / "index.json").write_text(json.dumps({"episodes": entries}, indent=1))
    return root


@pytest.fixture(scope="module")
def lockstep_dataset(tmp_path_factory, rollouts):
    """Six lockstep episodes, four of them usable (statuses ok, recovered)."""
    return write_dataset(tmp_path_factory.mktemp("data") / "push_demos", rollouts, STATUSES)


def expert_agreement(expert, episode) -> float:
    """The fraction of steps whose action is exactly the expert's answer to the step's
    observation (its last command: the step's before it)."""
    same = [np.array_equal(expert_answer(expert, {k: v[i] for k, v in episode.obs.items()},
                                         episode.actions[i - 1] if i else None),
                           episode.actions[i]) for i in range(len(episode))]
    return float(np.mean(same))


def arrays_of(dataset) -> dict:
    return {e.name: (e.actions, e.t, e.obs) for e in dataset.episodes}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
        for key in a[name][2]:
            np.testing.assert_array_equal(a[name][2][key], b[name][2][key])


# ===================================================================== alignment
def test_lockstep_steps_are_the_expert_answers(lockstep_dataset, rollouts, push_env):
    _, expert = push_env
    ds = build_dataset(lockstep_dataset, cache=False)
    assert [e.name for e in ds.episodes] == [f"episode_{i:06d}" for i in USABLE]
    for episode, i in zip(ds.episodes, USABLE):
        rollout = rollouts[i]
        n = len(rollout.actions)
        assert (episode.seed, episode.success, episode.dropped) == (rollout.seed,
                                                                     rollout.success, 0)
        assert len(episode) == n
        np.testing.assert_array_equal(episode.actions, np.array(rollout.actions))
        for key in ("joint_pos", "joint_vel", *POSE_KEYS):
            np.testing.assert_array_equal(episode.obs[key],
                                          np.array([s[key] for s in rollout.states[:n]]))
        np.testing.assert_allclose(episode.t, (T0_NS + np.arange(n) * PERIOD_NS) * 1e-9)
        assert episode.obs["joint_pos"].dtype == np.float64
        assert expert_agreement(expert, episode) >= 0.995
    every = build_dataset(lockstep_dataset, cache=False, include_interrupted=True)
    assert [e.name for e in every.episodes] == [f"episode_{i:06d}" for i in (0, 1, 2, 4)]


def test_realtime_command_lag_aligns_in_a_plain_folder_of_bags(rollouts, push_env, tmp_path):
    _, expert = push_env
    for i in (0, 1):
        write_episode(tmp_path / f"run_{i}", rollouts[i], timing="realtime")
    with pytest.raises(DatasetError, match="give the spec"):
        build_dataset(tmp_path, cache=False)
    ds = build_dataset(tmp_path, spec="push", cache=False, val_fraction=0.0)
    assert [e.name for e in ds.episodes] == ["run_0", "run_1"]
    for episode, rollout in zip(ds.episodes, rollouts):
        assert len(episode) == len(rollout.actions) and episode.dropped == 0
        assert expert_agreement(expert, episode) >= 0.995


def test_fast_commands_keep_one_per_control_period(rollouts, tmp_path):
    """Commands at 100 Hz: the first of each 50 ms period is the step. Bags as bare .mcap files."""
    bag = write_episode(tmp_path / "teleop", rollouts[0], timing="fast_commands")
    (bag / "teleop.mcap").rename(tmp_path / "teleop.mcap")
    shutil.rmtree(bag)
    ds = build_dataset(tmp_path, spec=SPEC, cache=False, val_fraction=0.0)
    (episode,) = ds.episodes
    assert episode.name == "teleop.mcap"
    np.testing.assert_array_equal(episode.actions, np.array(rollouts[0].actions))
    np.testing.assert_allclose(episode.t, (T0_NS + np.arange(len(episode)) * PERIOD_NS) * 1e-9)
    # the other four commands of each period are said, not left out silently
    reason = "commands faster than 20 Hz (one per period kept)"
    assert episode.drop_reasons == {reason: 4 * len(episode)}
    assert ds.summary["dropped"] == {reason: 4 * len(episode)}
    assert f"dropped {4 * len(episode):,} steps: {reason} {4 * len(episode)}" in ds.describe()


def test_missing_or_stale_messages_drop_steps(rollouts, tmp_path):
    """No gripper command yet at tick 0; the object pose lost at ticks 10-12 leaves tick 12's
    newest pose 3 periods old (ticks 10 and 11 use one 1 and 2 periods old)."""
    def edit(topic, k, msg):
        if (topic == "/gripper_controller/commands" and k == 0) or (
                topic == "/object_pose" and k in (10, 11, 12)):
            return None
        return msg

    bag = write_episode(tmp_path / "lossy", rollouts[0], edit=edit)
    episode = build_episode(bag, SPEC)
    kept = [k for k in range(len(rollouts[0].actions)) if k not in (0, 12)]
    assert episode.dropped == 2 and len(episode) == len(kept)
    np.testing.assert_allclose(episode.t, (T0_NS + np.array(kept) * PERIOD_NS) * 1e-9)
    np.testing.assert_array_equal(episode.obs["object_pose"][kept.index(11)],
                                  rollouts[0].states[9]["object_pose"])


def test_steps_with_a_nan_or_infinite_value_are_dropped_and_named(rollouts, tmp_path):
    """A NaN joint velocity at tick 3 and an infinite arm command at tick 5 (a broken sensor,
    a wild controller): they were trained on, and one made the run's loss NaN (exit 0, a
    useless checkpoint). Now the two steps are dropped, each counted under its reason."""
    def edit(topic, k, msg):  # (copies: the messages hold the shared rollouts' arrays)
        if topic == "/joint_states" and k == 3:
            msg.velocity = msg.velocity.copy()
            msg.velocity[2] = np.nan
        if topic == "/arm_controller/commands" and k == 5:
            msg.data = msg.data.copy()
            msg.data[0] = np.inf
        return msg

    episode = build_episode(write_episode(tmp_path / "wild", rollouts[0], edit=edit), SPEC)
    kept = [k for k in range(len(rollouts[0].actions)) if k not in (3, 5)]
    assert len(episode) == len(kept) and episode.dropped == 2
    assert episode.drop_reasons == {"non-finite joint_vel": 1, "non-finite arm": 1}
    assert np.isfinite(episode.actions).all() and np.isfinite(episode.obs["joint_vel"]).all()
    np.testing.assert_allclose(episode.t, (T0_NS + np.array(kept) * PERIOD_NS) * 1e-9)


def test_image_observations_are_decoded_at_the_spec_size(tmp_path):
    spec = Spec.load("push_image")
    image = spec.image_observations[0]
    env = ImitationEnv("push", render_mode="rgb_array", camera="front", width=64, height=48)
    try:
        rollout = run_expert(env, make_expert(env.sim), seed=0, max_steps=12, camera=True)
    finally:
        env.close()
    bag = write_episode(tmp_path / "camera", rollout, camera=True)
    episode = build_episode(bag, spec)
    frames = episode.obs[image.key]
    assert frames.shape == (len(rollout.actions), 96, 96, 3) and frames.dtype == np.uint8
    for k, frame in enumerate(frames):
        raw = SimpleNamespace(encoding="rgb8", height=48, width=64, step=64 * 3,
                              data=rollout.frames[k].tobytes())
        np.testing.assert_array_equal(frame, decode_image(raw, 96, 96, "rgb8"))
    assert len({f.tobytes() for f in frames}) > 1   # the arm moves: frames differ


# ===================================================================== what is used
SUMMARY_STATUSES = [("ok", {}), ("recording", {}), ("ok", {"interrupted": True}),
                    ("interrupted", {"interrupted": True}), ("failed", {"error": "disk full"}),
                    ("recovered", {}), ("unrecoverable", {"error": "empty file"}), ("ok", {})]


def summary_dataset(root: Path, rollouts: list) -> Path:
    """Episodes of every status, in an older dataset's way too (``ok`` + ``interrupted``);
    episode_000007 lost its gripper command at ticks 0 and 1 and its object pose at 10-12."""
    chosen = [rollouts[i % len(rollouts)] for i in range(len(SUMMARY_STATUSES))]
    write_dataset(root, chosen, [status for status, _ in SUMMARY_STATUSES])
    entries = json.loads((root / "index.json").read_text())["episodes"]
    for entry, (_, extra) in zip(entries, SUMMARY_STATUSES):
        entry.update(extra)
    (root / "index.json").write_text(json.dumps({"episodes": entries}))

    def lossy(topic, k, msg):
        if (topic == "/gripper_controller/commands" and k in (0, 1)) or (
                topic == "/object_pose" and k in (10, 11, 12)):
            return None
        return msg

    shutil.rmtree(root / "episode_000007")
    write_episode(root / "episode_000007", chosen[7], edit=lossy)
    return root


def test_the_build_says_what_it_used_and_skipped(rollouts, tmp_path):
    """Nothing is left out silently: every episode not used is named with its reason, and the
    steps dropped are counted per reason. Interrupted episodes (new status, and `ok` with
    `interrupted: true` of older datasets) and recovered ones are used only when asked for."""
    root = summary_dataset(tmp_path / "ds", rollouts)
    ds = build_dataset(root, val_fraction=0.0)
    names = [f"episode_{i:06d}" for i in range(len(SUMMARY_STATUSES))]
    assert ds.summary["used"] == [names[0], names[7]] == [e.name for e in ds.episodes]
    assert ds.summary["skipped"] == {
        "status recording": [names[1]],
        "interrupted (stopped before the episode ended)": [names[2], names[3]],
        "status failed": [names[4]],
        "recovered after a recorder crash (cut short)": [names[5]],
        "status unrecoverable": [names[6]]}
    assert ds.summary["dropped"] == {"no gripper yet": 2, "object_pose older than 2 periods": 1}
    steps = sum(len(e) for e in ds.episodes)
    assert ds.summary["steps"] == steps
    assert ds.describe() == (
        f"used 2 episodes ({steps:,} steps); skipped 6: status recording (episode_000001), "
        "interrupted (stopped before the episode ended) (episode_000002, episode_000003), "
        "status failed (episode_000004), recovered after a recorder crash (cut short) "
        "(episode_000005), status unrecoverable (episode_000006); dropped 3 steps: no gripper "
        "yet 2, object_pose older than 2 periods 1")
    cached = build_dataset(root, val_fraction=0.0)      # the same from the cache
    assert cached.decoded == [] and cached.summary == ds.summary

    every = build_dataset(root, val_fraction=0.0, include_interrupted=True)
    assert every.summary["used"] == [names[i] for i in (0, 2, 3, 5, 7)]
    assert list(every.summary["skipped"]) == ["status recording", "status failed",
                                              "status unrecoverable"]
    assert every.summary["include_interrupted"] is True


def test_nothing_to_use_names_every_reason(rollouts, tmp_path):
    write_dataset(tmp_path / "ds", rollouts[:2], ["interrupted", "recording"])
    with pytest.raises(DatasetError) as err:
        build_dataset(tmp_path / "ds")
    text = str(err.value)
    assert "no episode to use" in text and "status recording: episode_000001" in text
    assert "interrupted (stopped before the episode ended): episode_000000" in text
    assert "--include-interrupted" in text
    assert len(build_dataset(tmp_path / "ds", include_interrupted=True).episodes) == 1


@pytest.mark.slow
def test_train_command_reports_and_records_what_it_trained_on(rollouts, tmp_path):
    """`robot-imitation train` prints the build's summary, and result.json and each checkpoint's
    policy.json keep it; --include-interrupted adds the interrupted episodes."""
    root = summary_dataset(tmp_path / "ds", rollouts)
    cli = [sys.executable, "-m", "robot_imitation.cli", "train", str(root), "--steps", "3",
           "--eval-every", "0", "--eval-episodes", "0", "--device", "cpu"]
    proc = subprocess.run([*cli, "--out", str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = build_dataset(root, val_fraction=0.0).describe()
    assert f"[train] dataset: {expected}" in proc.stdout
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    meta = json.loads((Path(result["last"]) / "policy.json").read_text())
    for recorded in (result["dataset"], meta["dataset"]):
        assert recorded["used"] == ["episode_000000", "episode_000007"]
        assert recorded["skipped"]["status recording"] == ["episode_000001"]
    assert meta["training"]["include_interrupted"] is False

    proc = subprocess.run([*cli, "--out", str(tmp_path / "all"), "--include-interrupted",
                           "--val-fraction", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # every episode trained on: no validation loss to report (it said "best val loss inf")
    assert "samples/s; no validation episodes; best checkpoint" in proc.stdout, proc.stdout
    result = json.loads((tmp_path / "all" / "result.json").read_text())
    assert len(result["dataset"]["used"]) == 5 and result["dataset"]["include_interrupted"]


# ===================================================================== split and statistics
def test_an_index_entry_listed_twice_or_of_the_wrong_type_is_named(lockstep_dataset, tmp_path):
    """A copied index entry was trained on twice (it could land in both splits); a path that
    is a number, or a status that is a list, was a TypeError traceback in info, train, plot."""
    root = tmp_path / "ds"
    shutil.copytree(lockstep_dataset, root)
    index_path = root / "index.json"
    good = json.loads(index_path.read_text())
    cases = [(lambda e: e.append(dict(e[1])), "episodes 1 and 6 have the same name "
              "'episode_000001': an index lists each episode once"),
             (lambda e: e[2].update(path=5), "episode 2: path must be a non-empty string, got 5"),
             (lambda e: e[0].update(status=["ok"]),
              "episode 0: status must be a non-empty string, got ['ok']")]
    for change, says in cases:
        index = json.loads(json.dumps(good))
        change(index["episodes"])
        index_path.write_text(json.dumps(index))
        with pytest.raises(DatasetError, match=f"^{index_path}: " + re.escape(says)):
            build_dataset(root, cache=False)
        with pytest.raises(DatasetError, match=re.escape(says)):
            dataset_info(root)


@pytest.mark.parametrize("key, value, says", [
    ("relative_file_paths", 5, "relative_file_paths must be a list of strings, got 5"),
    ("relative_file_paths", [5], "relative_file_paths must be a list of strings, got [5]"),
    ("custom_data", "abc", "custom_data must be a mapping, got 'abc'"),
    ("compression_mode", 5, "compression_mode must be a string, got 5"),
    ("topics_with_message_count", "abc",
     "topics_with_message_count must be a list of mappings, got 'abc'"),
    ("topics_with_message_count", [{"topic_metadata": "x"}],
     "topic_metadata must be a mapping, got 'x'")])
def test_a_metadata_field_of_the_wrong_type_names_the_bag(lockstep_dataset, tmp_path, key,
                                                          value, says):
    """A bag's metadata.yaml with a field of another type than rosbag2 writes: TypeError,
    ValueError or AttributeError tracebacks in info, train, export and plot."""
    root = tmp_path / "ds"
    shutil.copytree(lockstep_dataset, root, ignore=shutil.ignore_patterns("cache"))
    meta = root / "episode_000000" / "metadata.yaml"
    data = yaml.safe_load(meta.read_text())
    data["rosbag2_bagfile_information"][key] = value
    meta.write_text(yaml.safe_dump(data))
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'episode_000000'}: "
                                                     f"metadata.yaml: {says}")):
        build_dataset(root, cache=False)
    assert f"UNREADABLE: {root / 'episode_000000'}: metadata.yaml: {says}" in \
        format_info(dataset_info(root))


def test_a_spec_edited_in_dataset_yaml_is_named(rollouts, tmp_path):
    """dataset.yaml keeps the spec the bags were recorded under and its fingerprint; an edited
    spec (here the control rate) was built with silently, resampling every episode."""
    root = write_dataset(tmp_path / "ds", rollouts[:1], ["ok"])
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    meta["spec_fingerprint"] = SPEC.fingerprint()
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    assert len(build_dataset(root, cache=False, val_fraction=0.0).episodes) == 1
    meta["spec"]["control_rate"] = 10.0
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(DatasetError, match=re.escape(
            f"{root / 'dataset.yaml'}: its spec does not match its spec_fingerprint (edited by "
            "hand?); the bags were recorded under the spec it was written with: to build with "
            "another one, give it (--spec)")):
        build_dataset(root, cache=False, val_fraction=0.0)
    assert len(build_dataset(root, spec=SPEC, cache=False, val_fraction=0.0).episodes) == 1


def test_split_is_by_episode_and_stats_come_from_train_only(lockstep_dataset):
    ds = build_dataset(lockstep_dataset, val_fraction=0.25, seed=3, cache=False)
    train, val = [e.name for e in ds.train], [e.name for e in ds.val]
    assert len(val) == 1 and sorted(train + val) == [e.name for e in ds.episodes]
    again = build_dataset(lockstep_dataset, val_fraction=0.25, seed=3, cache=False)
    assert [e.name for e in again.val] == val

    arrays, everything = ds.arrays("train"), ds.arrays("all")
    assert len(arrays["actions"]) == sum(len(e) for e in ds.train)
    np.testing.assert_array_equal(ds.stats["actions"].mean, arrays["actions"].mean(axis=0))
    np.testing.assert_array_equal(ds.stats["actions"].max, arrays["actions"].max(axis=0))
    pos = ds.stats["observations"]["joint_pos"]
    np.testing.assert_array_equal(pos.mean, arrays["obs"]["joint_pos"].mean(axis=0))
    np.testing.assert_array_equal(pos.min, arrays["obs"]["joint_pos"].min(axis=0))
    assert not np.allclose(pos.mean, everything["obs"]["joint_pos"].mean(axis=0))
    assert ds.stats["actions"].std[7] == 1e-6      # the push expert keeps the gripper closed
    assert json.loads(json.dumps(ds.stats["actions"].to_dict()))["std"][7] == 1e-6

    assert build_dataset(lockstep_dataset, val_fraction=0.01, cache=False).val  # at least one
    assert not build_dataset(lockstep_dataset, val_fraction=0.0, cache=False).val


# ===================================================================== executed sources
def intervention_pattern(n: int) -> list:
    """The policy drives, a person takes over for ticks 10-19 and from tick 30 on."""
    return ["human" if 10 <= k < 20 or k >= 30 else "policy" for k in range(n)]


@pytest.mark.parametrize("timing", ["lockstep", "realtime"])
def test_sources_keep_only_the_intervened_steps_as_segments(rollouts, tmp_path, timing):
    """HG-DAgger data: only the steps the person drove (by the recorded /command_mux/source)
    train, each intervention an episode of its own; the cache keeps the executed sources."""
    rollout = rollouts[0]
    n = len(rollout.actions)
    assert n > 32
    pattern = intervention_pattern(n)
    write_dataset(tmp_path / "hg", [rollout], ["ok"], timing=timing, sources=pattern)
    whole = build_dataset(tmp_path / "hg", val_fraction=0.0)
    (episode,) = whole.episodes
    assert list(episode.executed) == pattern

    ds = build_dataset(tmp_path / "hg", val_fraction=0.0, sources=["human"])
    assert ds.decoded == [] and [e.name for e in ds.episodes] == ["episode_000000/0",
                                                                   "episode_000000/1"]
    first, second = ds.episodes
    np.testing.assert_array_equal(first.actions, np.array(rollout.actions[10:20]))
    np.testing.assert_array_equal(second.actions, np.array(rollout.actions[30:n]))
    np.testing.assert_array_equal(first.obs["object_pose"],
                                  np.array([s["object_pose"] for s in rollout.states[10:20]]))
    np.testing.assert_array_equal(first.t, episode.t[10:20])
    assert set(first.executed) == set(second.executed) == {"human"}
    assert (first.seed, second.success) == (rollout.seed, rollout.success)
    assert len(ds.arrays("all")["actions"]) == n - 20
    assert ds.describe() == (f"used 1 episode ({n - 20:,} steps driven by human, of {n:,} in "
                             "those episodes)")
    # statistics come from the kept steps only
    np.testing.assert_allclose(ds.stats["actions"].mean,
                               np.array(rollout.actions[10:20] + rollout.actions[30:n]).mean(0))
    both = build_dataset(tmp_path / "hg", val_fraction=0.0, sources=["human", "policy"])
    assert [len(e) for e in both.episodes] == [n]

    with pytest.raises(DatasetError, match=r"no step was driven by \['expert'\]"):
        build_dataset(tmp_path / "hg", val_fraction=0.0, sources=["expert"])


def test_sources_need_the_recorded_source_topic(lockstep_dataset):
    with pytest.raises(DatasetError, match="has no /command_mux/source"):
        build_dataset(lockstep_dataset, cache=False, sources=["human"])


def test_train_command_keeps_only_the_given_sources(rollouts, tmp_path):
    """`robot-imitation train --sources human`: the checkpoint's normalization is that of the
    intervened steps."""
    rollout = rollouts[1]
    n = len(rollout.actions)
    write_dataset(tmp_path / "hg", [rollout, rollouts[0]], ["ok", "ok"],
                  sources=intervention_pattern(max(n, len(rollouts[0].actions))))
    proc = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "train",
                           str(tmp_path / "hg"), "--out", str(tmp_path / "run"), "--steps", "5",
                           "--eval-every", "0", "--eval-episodes", "0", "--device", "cpu",
                           "--sources", "human"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    meta = json.loads((Path(result["last"]) / "policy.json").read_text())
    assert meta["training"]["sources"] == ["human"]
    stored = np.array(meta["normalization"]["observations"]["joint_pos"]["mean"])
    kept = build_dataset(tmp_path / "hg", val_fraction=0.1, seed=0, sources=["human"])
    every = build_dataset(tmp_path / "hg", val_fraction=0.1, seed=0)
    np.testing.assert_allclose(stored, kept.stats["observations"]["joint_pos"].mean)
    assert not np.allclose(stored, every.stats["observations"]["joint_pos"].mean)


# ===================================================================== cache
def test_cache_never_decodes_twice_and_notices_changes(lockstep_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(lockstep_dataset, root)   # keeps modification times
    names = [f"episode_{i:06d}" for i in USABLE]

    first = build_dataset(root)
    assert first.decoded == names
    manifest = json.loads((root / "cache" / "manifest.json").read_text())
    assert sorted(manifest["episodes"]) == names
    assert build_dataset(root).decoded == []

    touched = root / names[1] / f"{names[1]}.mcap"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert build_dataset(root).decoded == [names[1]]

    variant = SPEC.to_dict()
    variant["observations"] = [o for o in variant["observations"] if o["key"] != "goal_pose"]
    variant["features"] = [f for f in variant.get("features", []) if "goal_pose" not in f["inputs"]]
    reduced = build_dataset(root, spec=Spec.from_dict(variant))
    assert reduced.decoded == names and "goal_pose" not in reduced.episodes[0].obs
    assert build_dataset(root).decoded == names     # the cache now held the reduced spec's
    assert len(list((root / "cache").glob("*.npz"))) == len(names)

    # Proof that a cache hit reads no bag: damage every bag but keep its size and time. A build
    # that decoded them would fail; the cached build returns the same arrays.
    for name in names:
        mcap = root / name / f"{name}.mcap"
        st, data = mcap.stat(), bytearray(mcap.read_bytes())
        data[len(data) // 3: len(data) // 3 + 256] = bytes(256)
        mcap.write_bytes(bytes(data))
        os.utime(mcap, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DatasetError):
        build_episode(root / names[0], SPEC)
    cached = build_dataset(root)
    assert cached.decoded == []
    assert_same_arrays(arrays_of(cached), arrays_of(first))


def test_a_damaged_cache_is_built_again(lockstep_dataset, tmp_path):
    """A truncated cache file was `zipfile.BadZipFile` in train and export, a manifest whose
    episodes were a list an AttributeError: a cache only saves time, so the episode is decoded
    from its bag again."""
    root = tmp_path / "copy"
    shutil.copytree(lockstep_dataset, root, ignore=shutil.ignore_patterns("cache"))
    names = [f"episode_{i:06d}" for i in USABLE]
    first = build_dataset(root)
    manifest_path = root / "cache" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    damaged = root / "cache" / manifest["episodes"][names[1]]["file"]
    damaged.write_bytes(damaged.read_bytes()[:100])
    again = build_dataset(root)
    assert again.decoded == [names[1]]
    assert_same_arrays(arrays_of(again), arrays_of(first))
    manifest_path.write_text(json.dumps({**manifest, "episodes": []}))
    assert build_dataset(root).decoded == names


# ===================================================================== errors
def status_msg(stamp_ns, episode: int):
    status_type = TYPES.types["diagnostic_msgs/msg/DiagnosticStatus"]
    key_value = TYPES.types["diagnostic_msgs/msg/KeyValue"]
    array = TYPES.types["diagnostic_msgs/msg/DiagnosticArray"]
    status = status_type(level=0, name="episode", message="running",
                         hardware_id="push",
                         values=[key_value(key="episode", value=str(episode))])
    return array(header=header(stamp_ns), status=[status])


def test_steps_before_the_final_episode_started_are_dropped(rollouts, push_env, tmp_path):
    """Rule 6: a recorder started before the reset caught the end of the previous episode."""
    switch = 5  # ticks 0..4 carry the previous episode's status

    bag = write_episode(tmp_path / "ep", rollouts[0])
    # Add the status stream to the bag: episode 6 before `switch`, episode 7 from it on.
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        raw = [(c.topic, c.msgtype, t, d) for c, t, d in reader.messages()]
    rebuilt = tmp_path / "ep_status"
    with Writer(rebuilt, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for topic, msgtype, t, data in raw:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=TYPES)
            writer.write(conns[topic], t, data)
        status = writer.add_connection("/episode/status", "diagnostic_msgs/msg/DiagnosticArray",
                                       typestore=TYPES)
        for k in range(len(rollouts[0].states)):
            stamp = T0_NS + k * PERIOD_NS
            msg = status_msg(stamp, 6 if k < switch else 7)
            writer.write(status, stamp, TYPES.serialize_cdr(msg, msg.__msgtype__))
    whole = build_episode(bag, SPEC)
    trimmed = build_episode(rebuilt, SPEC)
    assert len(whole) - len(trimmed) == switch == trimmed.dropped - whole.dropped
    np.testing.assert_array_equal(trimmed.actions, whole.actions[switch:])


def test_missing_topic_names_bag_topic_and_field(rollouts, tmp_path):
    bag = write_episode(tmp_path / "no_object",
                        rollouts[0], edit=lambda t, k, m: None if t == "/object_pose" else m)
    with pytest.raises(DatasetError) as err:
        build_episode(bag, SPEC)
    assert str(bag) in str(err.value) and "/object_pose" in str(err.value)
    assert "object_pose (geometry_msgs/msg/PoseStamped.pose)" in str(err.value)


def test_missing_joint_names_bag_and_joint(rollouts, tmp_path):
    names = push_joint_names()[:-1] + ["finger_right"]
    bag = write_episode(tmp_path / "renamed", rollouts[0], joint_names=names)
    with pytest.raises(DatasetError) as err:
        build_episode(bag, SPEC)
    assert str(bag) in str(err.value) and "['panda_finger_joint2']" in str(err.value)
    assert "joint_pos" in str(err.value) and "/joint_states" in str(err.value)


def test_wrong_command_size_names_bag_and_field(rollouts, tmp_path):
    def six_joints(topic, k, msg):
        if topic == "/arm_controller/commands":
            msg.data = msg.data[:6]
        return msg

    bag = write_episode(tmp_path / "short", rollouts[0], edit=six_joints)
    with pytest.raises(DatasetError) as err:
        build_episode(bag, SPEC)
    assert str(bag) in str(err.value) and "expected 7 values, got 6" in str(err.value)
    assert "arm (std_msgs/msg/Float64MultiArray.data)" in str(err.value)


def test_no_steps_explains_a_clock_mismatch(rollouts, tmp_path):
    bag = write_episode(tmp_path / "wall", rollouts[0], timing="wall_clock")
    with pytest.raises(DatasetError) as err:
        build_episode(bag, SPEC)
    text = str(err.value)
    assert str(bag) in text and "no steps" in text and "use_sim_time" in text


def test_a_flipped_bit_in_a_recorded_command_is_never_trained_on(rollouts, tmp_path):
    """The recorder's bags carry chunk CRCs: one bit flipped inside an arm command's float (same
    size, same message count, a plausible value) stops the build with an error naming the bag
    file and the chunk, instead of training on the changed value."""
    import struct

    from rosbags.rosbag2 import Reader

    from robot_imitation.recording.bagwriter import EpisodeBag, TypeRegistry

    plain = write_episode(tmp_path / "plain", rollouts[0])
    with Reader(plain) as reader:
        raw = [(c.topic, c.msgtype, t, bytes(d)) for c, t, d in reader.messages()]
    root = tmp_path / "ds"
    write_dataset(root, [], [])
    bag = EpisodeBag(root / "episode_000000", {t: ty for t, ty, _, _ in raw}, TypeRegistry())
    for topic, _, t, data in raw:
        bag.write(topic, t, data)
    bag.close()
    (root / "index.json").write_text(json.dumps({"episodes": [
        {"name": "episode_000000", "path": "episode_000000", "status": "ok"}]}))
    good = build_dataset(root, cache=False, val_fraction=0.0)
    np.testing.assert_array_equal(good.episodes[0].actions, np.array(rollouts[0].actions))

    mcap = root / "episode_000000" / "episode_000000.mcap"
    data = bytearray(mcap.read_bytes())
    value = struct.pack("<d", rollouts[0].actions[5][2])   # step 5's third arm joint
    at = data.find(value)
    assert at > 0 and data.find(value, at + 1) == -1
    data[at] ^= 1
    mcap.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        build_dataset(root, val_fraction=0.0)
    assert str(mcap) in str(err.value) and "chunk 1 of 1" in str(err.value)
    assert "does not match its CRC" in str(err.value)


def test_index_naming_a_missing_bag_is_an_error(lockstep_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(lockstep_dataset, root)
    shutil.rmtree(root / "episode_000004")
    with pytest.raises(DatasetError, match="episode_000004.*does not exist"):
        build_dataset(root, cache=False)


# ===================================================================== inspection
def test_dataset_info_counts_statuses_topics_and_rates(lockstep_dataset, rollouts):
    info = dataset_info(lockstep_dataset)
    assert info["spec"] == "push" and len(info["episodes"]) == len(STATUSES)
    assert info["statuses"] == {"ok": 3, "recovered": 1, "discarded": 1, "failed": 1}
    assert sum(info["success"].values()) == len(STATUSES)
    states = sum(len(r.states) for r in rollouts)
    assert info["topics"]["/joint_states"]["messages"] == states
    assert info["topics"]["/arm_controller/commands"]["messages"] == states - len(rollouts)
    assert info["topics"]["/joint_states"]["rate"] == pytest.approx(20.0, rel=0.05)
    text = format_info(info)
    assert "recovered 1" in text and "/gripper_controller/commands" in text
    assert "episode_000003  discarded" in text


def test_info_on_a_folder_of_bags_reads_success_and_seed_from_each_bag(rollouts, tmp_path):
    """Without an index (a folder of bags: a DAgger run's folder, bags copied together), each
    bag's metadata keeps its episode's success and seed (rosbag2's custom_data, as the
    recorder writes them): `info` said "unknown" and seed None for every episode."""
    root = tmp_path / "bags"
    root.mkdir()
    for i, rollout in enumerate(rollouts[:3]):
        with Writer(root / f"run_{i}", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            writer.set_custom_data("robot_imitation.success", str(rollout.success))
            writer.set_custom_data("robot_imitation.seed", str(rollout.seed))
            msg = joint_state_msg(T0_NS, push_joint_names(), rollout.states[0])
            connection = writer.add_connection("/joint_states", msg.__msgtype__,
                                               typestore=TYPES)
            writer.write(connection, T0_NS, TYPES.serialize_cdr(msg, msg.__msgtype__))
    info = dataset_info(root)
    assert [(e["success"], e["seed"]) for e in info["episodes"]] == [
        (r.success, r.seed) for r in rollouts[:3]]
    assert info["success"]["unknown"] == 0


def test_plot_episode_writes_a_png(lockstep_dataset, tmp_path):
    out = tmp_path / "episode.png"
    legend = plot_episode(lockstep_dataset, "episode_000001", out)
    assert legend["actions"][0] == "arm[0]" and len(legend["joint_pos (observation)"]) == 9
    from matplotlib.image import imread

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(out)[..., :3]
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.2
    assert coloured.sum() > 1000  # the plotted lines
    with pytest.raises(DatasetError, match="no episode 'episode_9'"):
        plot_episode(lockstep_dataset, "episode_9", out)


def test_info_exits_1_after_listing_every_episode_when_one_cannot_be_read(lockstep_dataset,
                                                                          tmp_path):
    """An unreadable episode used to be a line in the listing and exit 0: a script could not
    tell. Every episode is still listed; the unreadable ones are named again at the end and the
    exit status is 1. Bags the index already gives up on (discarded: deleted; failed) do not
    count."""
    root = tmp_path / "copy"
    shutil.copytree(lockstep_dataset, root)
    mcap = root / "episode_000004" / "episode_000004.mcap"
    mcap.write_bytes(mcap.read_bytes()[:2000])          # truncated
    shutil.rmtree(root / "episode_000003")               # discarded: its bag was deleted
    failed = root / "episode_000005" / "episode_000005.mcap"
    failed.write_bytes(failed.read_bytes()[:100])
    out = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "info", str(root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("  episode_")]
    assert [line.split()[0] for line in lines] == [f"episode_{i:06d}" for i in range(6)]
    assert "UNREADABLE" in lines[4] and str(mcap) in lines[4]
    assert "UNREADABLE" not in lines[3] and "bag deleted" in lines[3]
    assert "UNREADABLE" in lines[5]                      # listed, but expected
    assert "1 of 6 episodes cannot be read: episode_000004" in out.stderr
    assert "Traceback" not in out.stderr


def test_info_and_plot_commands(lockstep_dataset, tmp_path):
    """The command line as a user runs it: `robot-imitation info` and `plot`."""
    cli = [sys.executable, "-m", "robot_imitation.cli"]
    out = subprocess.run([*cli, "info", str(lockstep_dataset)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "recovered 1" in out.stdout and "/joint_states" in out.stdout
    png = tmp_path / "ep1.png"
    out = subprocess.run([*cli, "plot", str(lockstep_dataset), "episode_000001", "--out",
                          str(png)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = subprocess.run([*cli, "plot", str(lockstep_dataset), "episode_9", "--out", str(png),
                          "--overwrite"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no episode 'episode_9'" in out.stderr + out.stdout
    # --out without an extension: matplotlib wrote <out>.png and the line named <out>; one
    # it cannot write was a ValueError traceback after the episode was read
    out = subprocess.run([*cli, "plot", str(lockstep_dataset), "episode_000001", "--out",
                          str(tmp_path / "noext")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"wrote {tmp_path / 'noext.png'}" in out.stdout, out.stderr
    assert (tmp_path / "noext.png").is_file() and not (tmp_path / "noext").exists()
    out = subprocess.run([*cli, "plot", str(lockstep_dataset), "episode_000001", "--out",
                          str(tmp_path / "ep1.txt")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"robot-imitation plot: --out {tmp_path / 'ep1.txt'}: the "
                                 "plot's format is its extension, one of "), out.stderr
    # a folder that is no dataset: `info` listed "episodes: 0" and exited 0; `plot` on a
    # folder that does not exist said "no episode 0 (it has 0)"
    (tmp_path / "empty").mkdir()
    out = subprocess.run([*cli, "info", str(tmp_path / "empty")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"info: {tmp_path / 'empty'}: no dataset.yaml, no index.json and no bag: not a dataset "
        "(the wrong folder?)"), out.stderr
    out = subprocess.run([*cli, "plot", str(tmp_path / "nosuch"), "0"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"robot-imitation plot: {tmp_path / 'nosuch'}: no such dataset folder"), out.stderr
