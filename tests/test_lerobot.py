"""rosbag2 episodes <-> LeRobotDataset v3.0.

The datasets are bags of scripted-expert ``push`` episodes observed through ``push_image`` (the
camera rendered by MuJoCo), written by the recorder's bag writer; one test exports episodes
recorded through ROS. Exports are read back with pyarrow and PyAV directly (not with this
suite's reader) and checked against the v3.0 layout rules; where the ``lerobot`` package is
importable (or ROBOT_IMITATION_LEROBOT_PYTHON names a Python that has it), LeRobot's own
``LeRobotDataset`` loads the export offline.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robot_imitation.data.dataset import build_dataset
from robot_imitation.data.lerobot import (LeRobotError, export_lerobot, import_lerobot,
                                          open_lerobot, write_episode_bags)
from robot_imitation.rollouts.gym import expert_episodes
from robot_imitation.spec import Spec

SPEC = Spec.load("push_image")
STATUSES = ["ok", "discarded", "ok", "recording", "ok"]
USED = [0, 2, 4]
CLI = [sys.executable, "-m", "robot_imitation.cli"]


def spec_values(spec: Spec, episode) -> dict:
    """{spec key: array} of an Episode (its actions split into the spec's action fields)."""
    values = {f.key: episode.obs[f.key] for f in spec.observations}
    at = 0
    for f in spec.actions:
        values[f.key] = episode.actions[:, at:at + f.shape[0]]
        at += f.shape[0]
    return values


def write_dataset(root: Path, episodes: list, statuses: list) -> Path:
    def items():
        for e, status in zip(episodes, statuses):
            yield spec_values(SPEC, e), len(e), {
                "status": status, "task": "push", "success": e.success, "seed": e.seed,
                "operator": "expert", "notes": f"seed {e.seed}"}

    write_episode_bags(root, SPEC, items(), SPEC.control_rate)
    return root


@pytest.fixture(scope="module")
def episodes():
    return expert_episodes("push", range(len(STATUSES)), SPEC)


@pytest.fixture(scope="module")
def dataset(episodes, tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("lerobot") / "push_image_ds", episodes,
                         STATUSES)


@pytest.fixture(scope="module")
def exported(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lr"
    report = export_lerobot(dataset, out, task_text="push the puck to the goal")
    return out, report


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


# ===================================================================== export: the layout
def test_export_follows_the_v3_layout(exported, episodes):
    """Read back with pyarrow and PyAV alone: every required info.json field, the standard
    columns, index continuity, episode boundaries, frame timestamps of the videos within one
    frame (and within LeRobot's 1e-4 s tolerance), and the values the builder gives."""
    out, report = exported
    assert (report.episodes, report.skipped) == (3, {"status discarded": ["episode_000001"],
                                                     "status recording": ["episode_000003"]})
    info = json.loads((out / "meta" / "info.json").read_text())
    for key in ("codebase_version", "robot_type", "total_episodes", "total_frames",
                "total_tasks", "chunks_size", "data_files_size_in_mb",
                "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                "features"):
        assert key in info, key
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["robot_type"] == "panda"
    lengths = [len(episodes[i]) for i in USED]
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(lengths)
    assert info["splits"] == {"train": "0:3"}
    features = info["features"]
    state_names = features["observation.state"]["names"]
    assert state_names[:2] == ["joint_pos.panda_joint1", "joint_pos.panda_joint2"]
    assert "ee_pose.qw" in state_names and features["observation.state"]["shape"] == [25]
    assert features["action"]["names"] == [f"arm.{i}" for i in range(7)] + ["gripper.0"]
    video = features["observation.images.front_image"]
    assert video["dtype"] == "video" and video["shape"] == [96, 96, 3]
    assert video["names"] == ["height", "width", "channels"]
    assert video["info"]["video.codec"] == "h264" and video["info"]["video.fps"] == 20
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[key]["shape"] == [1]

    # data: the standard columns, one per feature (no other), continuous indices
    files = sorted((out / "data").glob("chunk-*/file-*.parquet"))
    assert [f.relative_to(out).as_posix() for f in files] == ["data/chunk-000/file-000.parquet"]
    table = pq.read_table(files[0])
    video_keys = {k for k, f in features.items() if f["dtype"] == "video"}
    assert set(table.column_names) == set(features) - video_keys
    assert table.schema.field("observation.state").type == pa.list_(pa.float32(), 25)
    assert table.schema.field("timestamp").type == pa.float32()
    data = table.to_pydict()
    n = len(data["index"])
    assert data["index"] == list(range(n)) and n == info["total_frames"]
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == [0, 1, 2]
    assert [e["length"] for e in eps] == lengths
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]
    assert tasks.to_pydict() == {"task_index": [0], "task": ["push the puck to the goal"]}
    state = np.array(data["observation.state"])
    action = np.array(data["action"])
    for e, i in zip(eps, USED):
        lo, hi = e["dataset_from_index"], e["dataset_to_index"]
        assert hi - lo == e["length"]
        assert data["episode_index"][lo:hi] == [e["episode_index"]] * e["length"]
        assert data["frame_index"][lo:hi] == list(range(e["length"]))
        np.testing.assert_allclose(data["timestamp"][lo:hi], np.arange(e["length"]) / 20,
                                   atol=1e-6)
        assert data["next.done"][lo:hi] == [False] * (e["length"] - 1) + [True]
        assert e["tasks"] == ["push the puck to the goal"]
        assert (e["robot_imitation/name"], e["robot_imitation/seed"],
                e["robot_imitation/success"]) == (f"episode_{i:06d}", i, episodes[i].success)
        src = episodes[i]
        expect = np.concatenate([src.obs[k] for k in ("joint_pos", "joint_vel", "ee_pose")], 1)
        np.testing.assert_array_equal(state[lo:hi], expect.astype(np.float32))
        np.testing.assert_array_equal(action[lo:hi], src.actions.astype(np.float32))

    # videos: one file of all episodes, frame k of an episode at from_timestamp + k / fps
    path = out / info["video_path"].format(video_key="observation.images.front_image",
                                           chunk_index=0, file_index=0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24"))
                   for f in container.decode(stream)]
    times = np.array([t for t, _ in decoded])
    assert len(decoded) == n
    for e, i in zip(eps, USED):
        start = e["videos/observation.images.front_image/from_timestamp"]
        assert e["videos/observation.images.front_image/to_timestamp"] == pytest.approx(
            start + e["length"] / 20)
        want = start + np.asarray(data["timestamp"][e["dataset_from_index"]:
                                                    e["dataset_to_index"]], np.float64)
        nearest = np.abs(times[None, :] - want[:, None]).min(axis=1)
        assert nearest.max() < 1e-4
        frames = np.stack([decoded[int(np.argmin(np.abs(times - t)))][1] for t in want])
        assert psnr(frames, episodes[i].obs["front_image"]) > 30

    # statistics: every feature, LeRobot's keys, image statistics per channel
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert set(stats) == set(features) - {"next.done"}
    for s in stats.values():
        assert set(s) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90",
                          "q99"}
    assert np.array(stats["observation.images.front_image"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [n]
    np.testing.assert_allclose(stats["action"]["mean"], action.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-4,
                               atol=1e-6)


def test_files_roll_over_into_new_files_and_chunks(dataset, tmp_path):
    """Past data_files_size_in_mb / video_files_size_in_mb a new file starts (at an episode
    boundary), and the episodes table points at the right one."""
    out = tmp_path / "lr"
    export_lerobot(dataset, out, data_file_mb=1e-6, video_file_mb=1e-6)
    data = sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))
    assert data == [f"data/chunk-000/file-{i:03d}.parquet" for i in range(3)]
    videos = sorted((out / "videos").rglob("*.mp4"))
    assert len(videos) == 3
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for k, e in enumerate(eps):
        assert (e["data/file_index"], e["videos/observation.images.front_image/file_index"],
                e["videos/observation.images.front_image/from_timestamp"]) == (k, k, 0.0)
        rows = pq.read_table(out / f"data/chunk-000/file-{k:03d}.parquet").to_pydict()
        assert set(rows["episode_index"]) == {k}
    back = open_lerobot(out)
    assert [len(back.frames(i)["index"]) for i in range(3)] == [e["length"] for e in eps]


def test_fps_takes_every_kth_step(dataset, episodes, tmp_path):
    report = export_lerobot(dataset, tmp_path / "lr10", fps=10)
    assert report.fps == 10
    back = open_lerobot(tmp_path / "lr10")
    assert back.fps == 10
    frames = back.frames(0)
    np.testing.assert_array_equal(frames["action"], episodes[0].actions[::2].astype(np.float32))
    with pytest.raises(LeRobotError, match="fps 7 must divide the spec's control rate 20"):
        export_lerobot(dataset, tmp_path / "lr7", fps=7)
    assert not (tmp_path / "lr7").exists()


def test_av1_videos(dataset, episodes, tmp_path):
    """--codec av1 (SVT-AV1, LeRobot's own default): decoded by PyAV, frames at their times.
    The export leaves this process's scheduling as it was: SVT-AV1 makes the thread that opens
    it SCHED_FIFO 99 where it may (as root), and every process started after inherited it (a CI
    run stalled past 90 minutes when two busy loops started later ran real-time)."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    export_lerobot(dataset, tmp_path / "av1", codec="av1")
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    info = json.loads((tmp_path / "av1" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.front_image"]["info"]["video.codec"] == "av1"
    path = next((tmp_path / "av1" / "videos").rglob("*.mp4"))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec.name in ("libdav1d", "av1", "libaom-av1")
        n = sum(1 for _ in container.decode(stream))
    assert n == info["total_frames"]
    back = open_lerobot(tmp_path / "av1")
    assert psnr(back.frames(1)["observation.images.front_image"],
                episodes[2].obs["front_image"]) > 30


# ===================================================================== round trip, import
def test_round_trip_gives_back_the_arrays(exported, episodes, tmp_path):
    """export, then import: the dataset builder gives the same arrays (float32 as exported),
    the images within the codec's tolerance, and the episodes keep their metadata."""
    out, _ = exported
    report = import_lerobot(out, SPEC, tmp_path / "back")
    assert report.episodes == 3
    assert report.mapping["joint_vel"] == "observation.state[9:18]"
    ds = build_dataset(tmp_path / "back", val_fraction=0.0, cache=False)
    assert len(ds.episodes) == 3
    index = json.loads((tmp_path / "back" / "index.json").read_text())["episodes"]
    for got, entry, i in zip(ds.episodes, index, USED):
        src = episodes[i]
        assert (entry["status"], entry["seed"], entry["success"], entry["operator"],
                entry["notes"]) == ("ok", i, src.success, "expert", f"seed {i}")
        assert entry["task"] == "push the puck to the goal" and got.dropped == 0
        np.testing.assert_array_equal(got.actions, src.actions.astype(np.float32))
        for key in ("joint_pos", "joint_vel", "ee_pose"):
            np.testing.assert_array_equal(got.obs[key], src.obs[key].astype(np.float32))
        assert psnr(got.obs["front_image"], src.obs["front_image"]) > 30
        np.testing.assert_allclose(np.diff(got.t), 0.05, atol=1e-9)


def test_interrupted_episodes_stay_interrupted_through_a_round_trip(dataset, tmp_path):
    """`export --include-interrupted`, then `import`: every status came back "ok", so the
    imported dataset trained on the episodes its source skips by default."""
    src = tmp_path / "src"
    shutil.copytree(dataset, src)
    index_path = src / "index.json"
    index = json.loads(index_path.read_text())
    index["episodes"][2]["status"] = "interrupted"
    index["episodes"][4]["interrupted"] = True  # status ok, marked by the recorder's stop
    index_path.write_text(json.dumps(index))
    export_lerobot(src, tmp_path / "lr", include_interrupted=True, cache=False)
    import_lerobot(tmp_path / "lr", SPEC, tmp_path / "back")
    statuses = [e["status"] for e in json.loads((tmp_path / "back" / "index.json")
                                                .read_text())["episodes"]]
    assert statuses == ["ok", "interrupted", "interrupted"], statuses
    back = build_dataset(tmp_path / "back", val_fraction=0.0, cache=False)
    assert back.summary["used"] == ["episode_000000"], back.summary
    assert len(build_dataset(src, val_fraction=0.0, cache=False).episodes) == 1


def test_dagger_episodes_keep_the_source_of_each_step(episodes, tmp_path):
    """The command mux's executed source (HG-DAgger data) goes into the episodes table and
    comes back as the recorded topic: training on the person's steps works after the trip."""
    chosen = [episodes[0], episodes[2]]
    drove = [np.where((np.arange(len(e)) // 5) % 2 == 1, "human", "policy") for e in chosen]

    def items():
        for e, sources in zip(chosen, drove):
            yield spec_values(SPEC, e), len(e), {"status": "ok", "task": "push",
                                                 "executed": sources.tolist()}

    write_episode_bags(tmp_path / "hg", SPEC, items(), SPEC.control_rate)
    export_lerobot(tmp_path / "hg", tmp_path / "lr")
    rows = pq.read_table(tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["robot_imitation/executed"] for r in rows] == [d.tolist() for d in drove]
    import_lerobot(tmp_path / "lr", SPEC, tmp_path / "back")
    for root in (tmp_path / "hg", tmp_path / "back"):
        ds = build_dataset(root, val_fraction=0.0, cache=False)
        for got, sources in zip(ds.episodes, drove):
            np.testing.assert_array_equal(got.executed, sources)
        human = build_dataset(root, val_fraction=0.0, cache=False, sources=["human"])
        assert sum(len(e) for e in human.episodes) == sum(int((d == "human").sum())
                                                          for d in drove)


def write_foreign(root: Path, episodes: list, png: bool = False) -> Path:
    """A LeRobotDataset v3.0 as another writer makes one (pandas-style tasks index without a
    name, plain list columns, one MP4 per episode, an SO-100-like naming), with pyarrow and
    PyAV only: the state is the arm joints alone, named as that robot's. ``png``: the camera
    as PNG images in the Parquet (LeRobot's ``image`` dtype) instead of videos."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    names = [f"motor_{j}.pos" for j in range(9)]
    rows, index, data = [], 0, {k: [] for k in ("observation.state", "action", "timestamp",
                                                "frame_index", "episode_index", "index",
                                                "task_index")}
    for k, e in enumerate(episodes):
        n = len(e)
        data["observation.state"] += e.obs["joint_pos"].tolist()
        data["action"] += e.actions.tolist()
        data["timestamp"] += (np.arange(n) / 20).tolist()
        data["frame_index"] += list(range(n))
        data["episode_index"] += [k] * n
        data["index"] += list(range(index, index + n))
        data["task_index"] += [0] * n
        if png:
            import io

            from PIL import Image

            cells = data.setdefault("observation.images.top", [])
            for img in e.obs["front_image"]:
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                cells.append({"bytes": buf.getvalue(), "path": None})
            rows.append({"episode_index": k, "tasks": ["push"], "length": n,
                         "data/chunk_index": 0, "data/file_index": 0,
                         "dataset_from_index": index, "dataset_to_index": index + n})
            index += n
            continue
        video = root / f"videos/observation.images.top/chunk-000/file-{k:03d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(video), "w") as c:
            s = c.add_stream("libx264", rate=20)
            s.width = s.height = 96
            s.pix_fmt = "yuv420p"
            for img in e.obs["front_image"]:
                c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            c.mux(s.encode())
        rows.append({"episode_index": k, "tasks": ["push"], "length": n,
                     "data/chunk_index": 0, "data/file_index": 0,
                     "dataset_from_index": index, "dataset_to_index": index + n,
                     "videos/observation.images.top/chunk_index": 0,
                     "videos/observation.images.top/file_index": k,
                     "videos/observation.images.top/from_timestamp": 0.0,
                     "videos/observation.images.top/to_timestamp": n / 20})
        index += n
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(data), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    tasks = pa.table({"task_index": [0], "__index_level_0__": ["push"]}).replace_schema_metadata(
        {b"pandas": json.dumps({"index_columns": ["__index_level_0__"], "columns": []}).encode()})
    pq.write_table(tasks, root / "meta" / "tasks.parquet")
    features = {"observation.state": {"dtype": "float32", "shape": [9], "names": names},
                "action": {"dtype": "float32", "shape": [8], "names": [f"cmd_{j}" for j in
                                                                      range(8)]},
                "observation.images.top": {"dtype": "image" if png else "video",
                                           "shape": [3, 96, 96] if png else [96, 96, 3],
                                           "names": ["channels", "height", "width"] if png
                                           else ["height", "width", "channels"]},
                **{k: {"dtype": "int64", "shape": [1], "names": None}
                   for k in ("frame_index", "episode_index", "index", "task_index")},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None}}
    (root / "meta" / "info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "robot_type": "so100", "total_episodes": len(episodes),
        "total_frames": index, "total_tasks": 1, "chunks_size": 1000, "fps": 20,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features}))
    return root


FOREIGN_SPEC = {
    "name": "foreign_arm", "control_rate": 20.0,
    "observations": [
        {"key": "joint_pos", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
         "field": "position", "joints": [f"j{j}" for j in range(9)]},
        {"key": "camera", "topic": "/top/image_raw", "type": "sensor_msgs/msg/Image",
         "field": "image", "image": {"width": 96, "height": 96, "encoding": "rgb8"}}],
    "actions": [
        {"key": "arm", "topic": "/arm_controller/commands",
         "type": "std_msgs/msg/Float64MultiArray", "field": "data", "size": 7},
        {"key": "gripper", "topic": "/gripper_controller/commands",
         "type": "std_msgs/msg/Float64MultiArray", "field": "data", "size": 1}],
}
FOREIGN_MAPPING = """\
joint_pos: {feature: observation.state, names: [motor_0.pos, motor_1.pos, motor_2.pos,
            motor_3.pos, motor_4.pos, motor_5.pos, motor_6.pos, motor_7.pos, motor_8.pos]}
camera: {feature: observation.images.top}
arm: {feature: action, slice: [0, 7]}
gripper: {feature: action, slice: [7, 8]}
"""


def test_import_of_a_dataset_written_by_another_writer(episodes, tmp_path):
    """A mapping file says which feature fills which field; the CLI imports it the user's way
    and the builder gives the frames."""
    src = write_foreign(tmp_path / "foreign", [episodes[0], episodes[2]])
    spec_path = tmp_path / "foreign_arm.yaml"
    spec_path.write_text(json.dumps(FOREIGN_SPEC))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(FOREIGN_MAPPING)
    run = subprocess.run(CLI + ["import", str(src), "--spec", str(spec_path), "--out",
                                str(tmp_path / "ds"), "--mapping", str(mapping)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "imported 2 episodes" in run.stdout and "camera <- observation.images.top" in \
        run.stdout
    ds = build_dataset(tmp_path / "ds", val_fraction=0.0, cache=False)
    for got, src_episode in zip(ds.episodes, [episodes[0], episodes[2]]):
        # this writer stored float64 lists: the values come back exactly
        np.testing.assert_array_equal(got.actions, src_episode.actions)
        np.testing.assert_array_equal(got.obs["joint_pos"], src_episode.obs["joint_pos"])
        assert psnr(got.obs["camera"], src_episode.obs["front_image"]) > 30
    # without the mapping, the names do not match: a clear error, nothing written
    run = subprocess.run(CLI + ["import", str(src), "--spec", str(spec_path), "--out",
                                str(tmp_path / "ds2")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
    assert "joint_pos: no feature of" in run.stderr and "--mapping" in run.stderr
    assert not (tmp_path / "ds2").exists()


def test_import_of_images_stored_in_the_parquet(episodes, tmp_path):
    """LeRobot's ``image`` dtype (PNG bytes in the data, channels-first shape): lossless."""
    src = write_foreign(tmp_path / "png", [episodes[0]], png=True)
    spec_path = tmp_path / "foreign_arm.yaml"
    spec_path.write_text(json.dumps(FOREIGN_SPEC))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(FOREIGN_MAPPING)
    import_lerobot(src, str(spec_path), tmp_path / "ds", mapping=mapping)
    got = build_dataset(tmp_path / "ds", val_fraction=0.0, cache=False).episodes[0]
    np.testing.assert_array_equal(got.obs["camera"], episodes[0].obs["front_image"])
    np.testing.assert_array_equal(got.actions, episodes[0].actions)


# ===================================================================== bad input
def test_bad_input_is_one_line_and_leaves_nothing(exported, episodes, tmp_path):
    out, _ = exported
    cases = []
    v21 = tmp_path / "v21"
    shutil.copytree(out, v21)
    info = json.loads((v21 / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    (v21 / "meta" / "info.json").write_text(json.dumps(info))
    cases.append((["import", str(v21), "--spec", "push_image"],
                  "LeRobotDataset version v2.1 is not supported: this reads v3.0"))
    novideo = tmp_path / "novideo"
    shutil.copytree(out, novideo)
    shutil.rmtree(novideo / "videos")
    cases.append((["import", str(novideo), "--spec", "push_image"],
                  "video of observation.images.front_image missing"))
    misfit = tmp_path / "mapping.yaml"
    misfit.write_text("arm: {feature: action, slice: [0, 6]}\n")
    cases.append((["import", str(out), "--spec", "push_image", "--mapping", str(misfit)],
                  "mapping: arm: 6 elements of action for the spec's 7"))
    bad_slice = tmp_path / "slice.yaml"
    bad_slice.write_text("arm: {feature: action, slice: [0, x]}\n")
    cases.append((["import", str(out), "--spec", "push_image", "--mapping", str(bad_slice)],
                  "arm: slice must be [start, stop], two whole numbers >= 0, not [0, 'x']"))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("elbow: {feature: action}\n")
    cases.append((["import", str(out), "--spec", "push_image", "--mapping", str(unknown)],
                  "mapping: ['elbow'] are not fields of spec push_image"))
    cases.append((["import", str(tmp_path), "--spec", "push_image"],
                  "not a LeRobot dataset (no meta/info.json)"))
    cases.append((["export", str(out), "--out", str(tmp_path / "x")], "no dataset.yaml"))
    # info.json fields of other types, a path pattern with another placeholder, a data column
    # gone: tracebacks (ValueError, TypeError, AttributeError, KeyError) before
    for name, change, message in [
            ("fps", {"fps": "abc"}, "info.json: fps must be a positive number, got 'abc'"),
            ("features", {"features": "x"},
             "info.json: features must be a mapping of feature mappings, got 'x'"),
            ("pattern", {"data_path": "data/{nosuch}.parquet"},
             "info.json: data_path 'data/{nosuch}.parquet' is not a path pattern")]:
        damaged = tmp_path / f"info_{name}"
        shutil.copytree(out, damaged)
        info = json.loads((damaged / "meta" / "info.json").read_text())
        (damaged / "meta" / "info.json").write_text(json.dumps({**info, **change}))
        cases.append((["import", str(damaged), "--spec", "push_image"], message))
    nocolumn = tmp_path / "nocolumn"
    shutil.copytree(out, nocolumn)
    for data_file in (nocolumn / "data").rglob("*.parquet"):
        pq.write_table(pq.read_table(data_file).drop_columns(["episode_index"]), data_file)
    cases.append((["import", str(nocolumn), "--spec", "push_image"],
                  "no column 'episode_index' in its data or episode metadata"))
    for argv, message in cases:
        target = tmp_path / "result"
        run = subprocess.run(CLI + argv + (["--out", str(target)] if argv[0] == "import"
                                           else []),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, (argv, run.stdout, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
        assert message in run.stderr, (argv, run.stderr)
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_refuses_a_used_folder_and_cleans_up_on_failure(dataset, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(LeRobotError, match="exists and is not empty"):
        export_lerobot(dataset, used)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    # a damaged bag among the usable episodes: one line naming it, no folder left behind
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    mcap = next((broken / "episode_000002").glob("*.mcap"))
    raw = bytearray(mcap.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    mcap.write_bytes(raw)
    with pytest.raises(LeRobotError, match="episode_000002"):
        export_lerobot(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "used"]


# ===================================================================== LeRobot's own loader
LOADER = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", sys.argv[2])
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/robot_imitation_export", root=sys.argv[1], video_backend="pyav",
                    delta_timestamps={"action": [0.0, 0.05, 0.1]})
items = [ds[i] for i in range(len(ds))]
print(json.dumps({"frames": len(ds), "episodes": ds.num_episodes, "task": items[0]["task"],
                  "action": [it["action"][0].tolist() for it in items],
                  "pad": int(sum(bool(it["action_is_pad"][-1]) for it in items)),
                  "image_shape": list(items[0]["observation.images.front_image"].shape),
                  "image_mean": float(sum(it["observation.images.front_image"].mean()
                                          for it in items) / len(items))}))
"""


def lerobot_python() -> str | None:
    given = os.environ.get("ROBOT_IMITATION_LEROBOT_PYTHON")
    if given:
        return given
    try:
        import lerobot.datasets.lerobot_dataset  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means: not available
        return None
    return sys.executable


def test_lerobot_loads_the_export_offline(exported, tmp_path):
    python = lerobot_python()
    if python is None:
        pytest.skip("the lerobot package is not importable here (and "
                    "ROBOT_IMITATION_LEROBOT_PYTHON is not set)")
    out, report = exported
    run = subprocess.run([python, "-c", LOADER, str(out), str(tmp_path / "hf")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["frames"], got["episodes"]) == (report.frames, 3)
    assert got["task"] == "push the puck to the goal"
    assert got["image_shape"] == [3, 96, 96] and 0.05 < got["image_mean"] < 0.95
    table = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    np.testing.assert_allclose(got["action"], np.array(table["action"]), atol=1e-6)
    assert got["pad"] == 3 * 2  # the last two frames of each episode look past its end


# ===================================================================== episodes recorded via ROS
@pytest.mark.ros
@pytest.mark.slow
def test_round_trip_of_episodes_recorded_through_ros(reach_demos, tmp_path):
    """The reach episodes recorded by bridge, expert and recorder: exported with the CLI,
    imported back, the builder gives the same arrays as from the recorded bags (float32)."""
    run = subprocess.run(CLI + ["export", str(reach_demos), "--out", str(tmp_path / "lr")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    info = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 80 and "video_path" in info
    run = subprocess.run(CLI + ["import", str(tmp_path / "lr"), "--spec", "reach", "--out",
                                str(tmp_path / "back")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    recorded = build_dataset(reach_demos, val_fraction=0.0, cache=False)
    back = build_dataset(tmp_path / "back", val_fraction=0.0, cache=False)
    assert len(back.episodes) == len(recorded.episodes) == 80
    for a, b in zip(recorded.episodes, back.episodes):
        np.testing.assert_array_equal(b.actions, a.actions.astype(np.float32))
        for key in a.obs:
            np.testing.assert_array_equal(b.obs[key], a.obs[key].astype(np.float32))
        assert (b.success, b.seed) == (a.success, a.seed)


WRITER = """
import json, os, sys
import numpy as np
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", sys.argv[2])
from lerobot.datasets.lerobot_dataset import LeRobotDataset
features = {
    "observation.state": {"dtype": "float32", "shape": (9,),
                          "names": [f"motor_{j}.pos" for j in range(9)]},
    "action": {"dtype": "float32", "shape": (8,), "names": [f"cmd_{j}" for j in range(8)]},
    "observation.images.top": {"dtype": "video", "shape": (96, 96, 3),
                               "names": ["height", "width", "channels"]},
}
ds = LeRobotDataset.create("local/written_by_lerobot", fps=20, features=features,
                           root=sys.argv[1], use_videos=True)  # LeRobot's default codec (AV1)
rng = np.random.default_rng(0)
for length in (12, 15):
    for k in range(length):
        img = np.zeros((96, 96, 3), np.uint8)
        img[:, :, 0] = 40 + 10 * k
        img[20:60, 30:70, 1] = 200
        ds.add_frame({"observation.state": rng.random(9).astype(np.float32),
                      "action": rng.random(8).astype(np.float32),
                      "observation.images.top": img, "task": "push"})
    ds.save_episode()
ds.finalize()
back = LeRobotDataset("local/written_by_lerobot", root=sys.argv[1], video_backend="pyav")
items = [back[i] for i in range(len(back))]
print(json.dumps({"state": [it["observation.state"].tolist() for it in items],
                  "action": [it["action"].tolist() for it in items],
                  "image": [(it["observation.images.top"] * 255).round().permute(1, 2, 0)
                            .to(dtype=__import__("torch").uint8).tolist()[::16] for it in items],
                  "episode": [int(it["episode_index"]) for it in items]}))
"""


def test_import_of_a_dataset_written_by_lerobot(tmp_path):
    """A dataset written by LeRobot's own writer (AV1 videos, its Parquet and metadata) is
    imported with a mapping; the builder gives what LeRobot's loader gives."""
    python = lerobot_python()
    if python is None:
        pytest.skip("the lerobot package is not importable here (and "
                    "ROBOT_IMITATION_LEROBOT_PYTHON is not set)")
    src = tmp_path / "by_lerobot"
    run = subprocess.run([python, "-c", WRITER, str(src), str(tmp_path / "hf")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    want = json.loads(run.stdout.strip().splitlines()[-1])
    spec_path = tmp_path / "foreign_arm.yaml"
    spec_path.write_text(json.dumps(FOREIGN_SPEC))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(FOREIGN_MAPPING)
    report = import_lerobot(src, str(spec_path), tmp_path / "ds", mapping=mapping)
    assert (report.episodes, report.frames) == (2, 27)
    ds = build_dataset(tmp_path / "ds", val_fraction=0.0, cache=False)
    actions = np.concatenate([e.actions for e in ds.episodes])
    state = np.concatenate([e.obs["joint_pos"] for e in ds.episodes])
    images = np.concatenate([e.obs["camera"] for e in ds.episodes])
    np.testing.assert_array_equal(actions, np.array(want["action"], np.float32))
    np.testing.assert_array_equal(state, np.array(want["state"], np.float32))
    np.testing.assert_allclose(images[:, ::16].astype(int), np.array(want["image"]), atol=2)


def test_a_full_disk_is_one_line_and_leaves_nothing(exported, dataset, small_disk):
    """Export and import onto a disk with 64 KiB free: ``No space left on device``, exit 1,
    no partial folder left (the filler is all there is)."""
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(bytes(max(0, free - 64 * 1024)))
    out, _ = exported
    for argv in (["export", str(dataset), "--out", str(small_disk / "lr")],
                 ["import", str(out), "--spec", "push_image", "--out", str(small_disk / "ds")]):
        run = subprocess.run(CLI + argv, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, (argv, run.stdout, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
        assert "No space left on device" in run.stderr
        assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_overwrite_never_replaces_the_source(tmp_path):
    """`export DS --out DS --overwrite` (or --out inside DS, or a folder holding it) replaced
    the source with the export: every bag gone, exit 0; `import` the same. Refused now, before
    anything is read or written."""
    src = tmp_path / "data" / "ds"
    (src / "episode_000000").mkdir(parents=True)
    (src / "episode_000000" / "bag.mcap").write_bytes(b"kept")
    for out, where in ((src, "is"), (src / "episode_000000", "is inside"),
                       (tmp_path / "data", "holds")):
        with pytest.raises(LeRobotError, match=rf"^--out {out} {where} the source {src}: "):
            export_lerobot(src, out, overwrite=True)
        with pytest.raises(LeRobotError, match=rf"^--out {out} {where} the source {src}: "):
            import_lerobot(src, "reach", out, overwrite=True)
    assert (src / "episode_000000" / "bag.mcap").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bag.mcap", "data", "ds",
                                                           "episode_000000"]
