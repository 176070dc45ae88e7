"""Faults of `export` / `import` (LeRobotDataset v3.0) found by an audit, each with a test that
failed before its fix. The LeRobot datasets are written here with pyarrow and PyAV, as LeRobot
0.4 writes them (several episodes per data and video file); the datasets to export are written
with the suite's bag writer from made-up arrays, so no simulation is needed."""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robot_imitation.data import lerobot
from robot_imitation.data.dataset import build_dataset
from robot_imitation.data.lerobot import (LeRobotError, export_lerobot, import_lerobot,
                                          open_lerobot, write_episode_bags)
from robot_imitation.spec import Spec

CLI = [sys.executable, "-m", "robot_imitation.cli"]
FPS = 20
H = W = 32
CAM = "observation.images.camera"
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
STATE_NAMES = [f"joint_pos.j{j}" for j in range(6)]
ACTION_NAMES = [f"arm.{j}" for j in range(5)] + ["gripper.0"]
SPEC_DICT = {
    "name": "lr_arm", "control_rate": float(FPS),
    "observations": [
        {"key": "joint_pos", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
         "field": "position", "joints": [f"j{j}" for j in range(6)]},
        {"key": "camera", "topic": "/camera/image_raw", "type": "sensor_msgs/msg/Image",
         "field": "image", "image": {"width": W, "height": H, "encoding": "rgb8"}}],
    "actions": [
        {"key": "arm", "topic": "/arm_controller/commands",
         "type": "std_msgs/msg/Float64MultiArray", "field": "data", "size": 5},
        {"key": "gripper", "topic": "/gripper_controller/commands",
         "type": "std_msgs/msg/Float64MultiArray", "field": "data", "size": 1}],
}


def image(e: int, k: int, h: int = H, w: int = W) -> np.ndarray:
    """Frame k of episode e: flat colours that tell every frame apart after H.264."""
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 16 + 4 * k
    img[..., 1] = 40 + 50 * e
    img[..., 2] = 128
    return img


def state(e: int, n: int) -> np.ndarray:
    return (np.arange(6)[None, :] + 100 * e + np.arange(n)[:, None]).astype(np.float32)


def action(e: int, n: int) -> np.ndarray:
    return -state(e, n) - 0.5


def fixed_list(values: np.ndarray):
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def write_lerobot(root: Path, lengths: list, per_file: int = 100, size: tuple = (H, W),
                  png: bool = False) -> Path:
    """A LeRobotDataset v3.0 as LeRobot 0.4 writes it: ``per_file`` episodes per MP4 (frame
    k of a file at pts k, GOP 2), all rows in one data file, the spec's element names."""
    h, w = size
    rows, tables, files, index = [], [], {}, 0
    for e, n in enumerate(lengths):
        columns = {"observation.state": fixed_list(state(e, n)),
                   "action": fixed_list(action(e, n)),
                   "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
                   "frame_index": pa.array(np.arange(n)),
                   "episode_index": pa.array(np.full(n, e)),
                   "index": pa.array(np.arange(index, index + n)),
                   "task_index": pa.array(np.zeros(n, np.int64))}
        row = {"episode_index": e, "tasks": ["push"], "length": n, "data/chunk_index": 0,
               "data/file_index": 0, "dataset_from_index": index,
               "dataset_to_index": index + n}
        if png:
            import io

            from PIL import Image

            cells = []
            for k in range(n):
                buf = io.BytesIO()
                Image.fromarray(image(e, k, h, w)).save(buf, format="PNG")
                cells.append({"bytes": buf.getvalue(), "path": None})
            columns[CAM] = pa.array(cells)
        else:
            number = e // per_file
            if number not in files:
                path = root / f"videos/{CAM}/chunk-000/file-{number:03d}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                container = av.open(str(path), "w")
                stream = container.add_stream("libx264", rate=FPS,
                                              options={"crf": "10", "g": "2"})
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                files[number] = [container, stream, 0]
            container, stream, start = files[number]
            for k in range(n):
                frame = av.VideoFrame.from_ndarray(image(e, k, h, w), format="rgb24")
                frame.pts, frame.time_base = files[number][2], Fraction(1, FPS)
                container.mux(stream.encode(frame))
                files[number][2] += 1
            row.update({f"videos/{CAM}/chunk_index": 0, f"videos/{CAM}/file_index": number,
                        f"videos/{CAM}/from_timestamp": start / FPS,
                        f"videos/{CAM}/to_timestamp": (start + n) / FPS})
        tables.append(pa.table(columns))
        rows.append(row)
        index += n
    for container, stream, _ in files.values():
        container.mux(stream.encode())
        container.close()
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / DATA)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / EPISODES)
    pq.write_table(pa.table({"task_index": [0], "__index_level_0__": ["push"]}),
                   root / "meta/tasks.parquet")
    camera = ({"dtype": "image", "shape": [3, h, w], "names": ["channels", "height", "width"]}
              if png else {"dtype": "video", "shape": [h, w, 3],
                           "names": ["height", "width", "channels"]})
    features = {"observation.state": {"dtype": "float32", "shape": [6], "names": STATE_NAMES},
                "action": {"dtype": "float32", "shape": [6], "names": ACTION_NAMES},
                CAM: camera,
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                **{k: {"dtype": "int64", "shape": [1], "names": None}
                   for k in ("frame_index", "episode_index", "index", "task_index")}}
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "robot_type": "so100_follower",
        "total_episodes": len(lengths), "total_frames": index, "total_tasks": 1,
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
        "fps": FPS, "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features}))
    return root


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "lr_arm.yaml"
    path.write_text(json.dumps(SPEC_DICT))
    return path


def cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=120)


def assert_one_line(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert message in run.stderr, run.stderr


class CountingOpen:
    """``av.open`` that counts the frames each decode returns (to see how much was decoded)."""

    def __init__(self, real):
        self.real, self.frames = real, 0

    def __call__(self, *args, **kwargs):
        counter = self

        class Container:
            def __init__(self, inner):
                self.inner = inner

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def decode(self, *a, **k):
                for frame in self.inner.decode(*a, **k):
                    counter.frames += 1
                    yield frame

        return Container(self.real(*args, **kwargs))


# ===================================================================== 1. decoding memory
def test_an_episode_is_decoded_alone_from_a_file_of_many(tmp_path, spec_file, monkeypatch):
    """LeRobot packs many episodes into one MP4: each whole file was decoded into memory (three
    copies of it). Now an episode's frames alone are decoded, from the keyframe before it."""
    lengths = [12, 15, 10]
    src = write_lerobot(tmp_path / "lr", lengths)
    assert len(list((src / "videos").rglob("*.mp4"))) == 1
    counting = CountingOpen(av.open)
    monkeypatch.setattr(av, "open", counting)
    data = open_lerobot(src)
    for e, n in enumerate(lengths):
        before = counting.frames
        got = data.frames(e)[CAM]
        assert got.shape == (n, H, W, 3)
        np.testing.assert_allclose(got, np.stack([image(e, k) for k in range(n)]), atol=4)
        # its frames, the keyframe before it and the first frame after it: not all 37
        assert counting.frames - before <= n + 3, (e, counting.frames - before)
    monkeypatch.undo()
    import_lerobot(src, str(spec_file), tmp_path / "ds")
    ds = build_dataset(tmp_path / "ds", val_fraction=0.0, cache=False)
    for e, (got, n) in enumerate(zip(ds.episodes, lengths)):
        np.testing.assert_allclose(got.obs["camera"], np.stack([image(e, k) for k in range(n)]),
                                   atol=4)
        np.testing.assert_array_equal(got.obs["joint_pos"], state(e, n))
        np.testing.assert_array_equal(got.actions, action(e, n))


def suite_dataset(root: Path, spec_file: Path, lengths: list, start: int = 0) -> Path:
    """A dataset of the suite (bags written by the suite's writer) of made-up episodes."""
    spec = Spec.load(str(spec_file))

    def items():
        for e, n in enumerate(lengths, start):
            values = {"joint_pos": state(e, n).astype(np.float64),
                      "camera": np.stack([image(e, k) for k in range(n)])}
            act = action(e, n).astype(np.float64)
            values.update(arm=act[:, :5], gripper=act[:, 5:])
            yield values, n, {"status": "ok", "task": "push", "success": True, "seed": e,
                              "operator": "tester", "notes": f"episode {e}"}

    write_episode_bags(root, spec, items(), FPS)
    return root


def total_episodes(out: Path) -> int:
    if (out / "meta/info.json").is_file():
        return json.loads((out / "meta/info.json").read_text())["total_episodes"]
    return len(json.loads((out / "index.json").read_text())["episodes"])


# ===================================================================== 2. --overwrite's swap
def test_overwrite_keeps_the_old_or_the_new_output_whatever_stops_it(tmp_path, spec_file,
                                                                      monkeypatch):
    """The swap was: delete --out, then move the new folder in. Stopped in between, the old
    output was gone and the new one hidden. Now the old one is renamed aside, the new moved in,
    the old deleted: a stop right after any step leaves a complete output at --out."""
    src = suite_dataset(tmp_path / "ds", spec_file, [6, 5])
    lr = tmp_path / "lr"
    export_lerobot(src, lr)
    lr_old = tmp_path / "lr_old"
    export_lerobot(suite_dataset(tmp_path / "ds1", spec_file, [4]), lr_old)
    back_old = tmp_path / "back"
    import_lerobot(lr_old, str(spec_file), back_old)
    real_rmtree = lerobot.shutil.rmtree

    def stopped_after(path, *args, **kwargs):  # the process stops right after a deletion
        real_rmtree(path, *args, **kwargs)
        if ".partial-" not in Path(path).name:
            raise KeyboardInterrupt

    monkeypatch.setattr(lerobot.shutil, "rmtree", stopped_after)
    with pytest.raises(KeyboardInterrupt):
        export_lerobot(src, lr_old, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        import_lerobot(lr, str(spec_file), back_old, overwrite=True)
    monkeypatch.undo()
    assert (lr_old / "meta/info.json").is_file(), "the old export is lost, the new one hidden"
    assert total_episodes(lr_old) == 2 and total_episodes(back_old) == 2  # the new ones
    # the move of the new folder fails: the old output is back, one line, nothing left over
    real_replace = lerobot.os.replace

    def failing(a, b):
        if ".partial-" in Path(a).name:
            raise OSError(28, "No space left on device")
        real_replace(a, b)

    monkeypatch.setattr(lerobot.os, "replace", failing)
    with pytest.raises(LeRobotError, match="No space left on device"):
        export_lerobot(suite_dataset(tmp_path / "ds3", spec_file, [3, 3, 3]), lr_old,
                       overwrite=True)
    with pytest.raises(LeRobotError, match="No space left on device"):
        import_lerobot(lr_old, str(spec_file), back_old, overwrite=True)
    monkeypatch.undo()
    assert total_episodes(lr_old) == 2 and total_episodes(back_old) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ===================================================================== 3. short first episode
def test_export_of_a_first_episode_of_three_frames(tmp_path, spec_file):
    """x264 emits no packet for the first few frames, so the MP4 did not exist yet when the
    second episode asked for its size: "writing ...: No such file or directory"."""
    src = suite_dataset(tmp_path / "ds", spec_file, [3, 4, 2])
    export_lerobot(src, tmp_path / "lr")
    data = open_lerobot(tmp_path / "lr")
    for e, n in enumerate([3, 4, 2]):
        np.testing.assert_allclose(data.frames(e)[CAM], np.stack([image(e, k)
                                                                  for k in range(n)]), atol=4)


# ===================================================================== 4. a camera alone
def test_a_spec_that_observes_a_camera_alone_exports_and_imports(tmp_path, spec_file):
    """`list_size needs to be a strict positive integer` (an observation.state of size 0):
    now there is no observation.state, and the import takes such a dataset back."""
    src = suite_dataset(tmp_path / "ds", spec_file, [5, 4])
    only = dict(SPEC_DICT, name="camera_only", observations=SPEC_DICT["observations"][1:])
    only_file = tmp_path / "camera_only.yaml"
    only_file.write_text(json.dumps(only))
    export_lerobot(src, tmp_path / "lr", spec=str(only_file))
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert "observation.state" not in info["features"] and CAM in info["features"]
    assert "observation.state" not in pq.read_table(tmp_path / "lr" / DATA).column_names
    import_lerobot(tmp_path / "lr", str(only_file), tmp_path / "back")
    ds = build_dataset(tmp_path / "back", val_fraction=0.0, cache=False)
    for e, (got, n) in enumerate(zip(ds.episodes, [5, 4])):
        np.testing.assert_array_equal(got.actions, action(e, n))
        np.testing.assert_allclose(got.obs["camera"], np.stack([image(e, k) for k in range(n)]),
                                   atol=4)


# ===================================================================== 5. --out . / .. / a link
def test_out_is_resolved_before_anything(tmp_path, spec_file):
    """--out a symbolic link: "Cannot call rmtree on a symbolic link" after all the work, a
    hidden partial folder left; --out .: a ValueError traceback; --out .. --overwrite with the
    temporary folder inside .. emptied it, the new export included. Now --out is resolved
    first: a link's folder is replaced (the link kept), the current folder or one holding it
    is refused in one line, and nothing is left over."""
    src = suite_dataset(tmp_path / "ds", spec_file, [4, 3])
    target = tmp_path / "target"
    export_lerobot(suite_dataset(tmp_path / "ds1", spec_file, [5]), target)
    link = tmp_path / "link"
    link.symlink_to(target)
    run = cli("export", src, "--out", link, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert link.is_symlink() and total_episodes(target) == 2
    back = tmp_path / "back"
    import_lerobot(target, str(spec_file), back)
    link2 = tmp_path / "link2"
    link2.symlink_to(back)
    run = cli("import", target, "--spec", spec_file, "--out", link2, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert link2.is_symlink() and total_episodes(back) == 2
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine")
    for argv, message in (
            (["export", src, "--out", ".", "--overwrite"], "--out . is the current folder"),
            (["export", src, "--out", ".."], "--out .. holds the current folder"),
            (["export", src, "--out", "..", "--overwrite"], "--out .. holds the current folder"),
            (["import", target, "--spec", spec_file, "--out", ".", "--overwrite"],
             "--out . is the current folder")):
        run = subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True,
                             timeout=120, cwd=here)
        assert_one_line(run, message)
        assert [p.name for p in here.iterdir()] == ["keep.txt"]
        assert [p.name for p in here.parent.iterdir()] == ["here"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run(CLI + ["export", str(src), "--out", "."], capture_output=True,
                         text=True, timeout=120, cwd=empty)
    assert_one_line(run, "--out . is the current folder")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def shrink_in_info(root: Path, size: int) -> None:
    """info.json states the camera at ``size`` x ``size`` (the frames are another size)."""
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    shape = info["features"][CAM]["shape"]
    info["features"][CAM]["shape"] = [size, size, 3] if shape[-1] == 3 else [3, size, size]
    path.write_text(json.dumps(info))


# ===================================================================== 6. frame size
@pytest.mark.parametrize("png", [False, True])
def test_frames_of_another_size_than_info_json_are_refused(tmp_path, spec_file, png):
    """A 48x48 video (or PNG images) where info.json says 32x32: imported, exit 0, and the
    builder resized the frames without a word. Now one line naming both sizes."""
    src = write_lerobot(tmp_path / "lr", [4, 3], size=(48, 48), png=png)
    shrink_in_info(src, 32)
    run = cli("import", src, "--spec", spec_file, "--out", tmp_path / "ds")
    what = "frame 0: the image is 48x48" if png else "the video's frames are 48x48"
    assert_one_line(run, f"{CAM}: episode 0")
    assert f"{what}, meta/info.json says 32x32" in run.stderr
    assert not (tmp_path / "ds").exists()
    # one PNG of another size among the right ones (was np.stack's ValueError)
    if png:
        src = write_lerobot(tmp_path / "lr2", [4, 3], png=True)
        table = pq.read_table(src / DATA)
        cells = table.column(CAM).to_pylist()
        odd = write_lerobot(tmp_path / "odd", [1], size=(16, 16), png=True)
        cells[5] = pq.read_table(odd / DATA).column(CAM).to_pylist()[0]
        table = table.set_column(table.column_names.index(CAM), CAM, pa.array(cells))
        pq.write_table(table, src / DATA)
        run = cli("import", src, "--spec", spec_file, "--out", tmp_path / "ds")
        assert_one_line(run, f"{CAM}: episode 1, frame 1: the image is 16x16, meta/info.json "
                        "says 32x32")
        assert not (tmp_path / "ds").exists()


def edit_table(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def set_column(table, name: str, values):
    return table.set_column(table.column_names.index(name), name,
                            pa.array(values, table.schema.field(name).type))


# ===================================================================== 7. order of rows, frames
def test_rows_are_taken_in_frame_order_and_frames_inside_the_episode(tmp_path, spec_file):
    """Rows were paired by position: an episode's rows reversed or shuffled in the Parquet
    imported silently, states and actions reversed against the video. Now rows are ordered by
    frame_index (0..length-1 exactly, timestamps increasing, else one line), and video frames
    are those in [from_timestamp, to_timestamp), as many as the episode's frames."""
    lengths = [6, 5, 7]
    src = write_lerobot(tmp_path / "lr", lengths)
    order = np.random.default_rng(1).permutation(sum(lengths))
    edit_table(src / DATA, lambda t: t.take(order))
    import_lerobot(src, str(spec_file), tmp_path / "ds")
    ds = build_dataset(tmp_path / "ds", val_fraction=0.0, cache=False)
    for e, (got, n) in enumerate(zip(ds.episodes, lengths)):
        np.testing.assert_array_equal(got.obs["joint_pos"], state(e, n))
        np.testing.assert_array_equal(got.actions, action(e, n))
        np.testing.assert_allclose(got.obs["camera"], np.stack([image(e, k) for k in range(n)]),
                                   atol=4)
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    timestamp = (frame_index / FPS).astype(np.float32)
    twice, gap, still = frame_index.copy(), frame_index.copy(), timestamp.copy()
    twice[6 + 3] = 2      # episode 1: frame_index 2 twice, no 3
    gap[6 + 4] = 9        # episode 1: no frame_index 4
    still[6 + 3] = still[6 + 2]
    cases = [("frame_index", twice, "episode 1: frame_index 2 twice (its 5 rows must be "
              "frames 0..4)"),
             ("frame_index", gap, "episode 1: no frame_index 4"),
             ("timestamp", still, "episode 1: timestamp of frame 3 (0.1 s) is not after "
              "frame 2's (0.1 s)")]
    for number, (column, values, message) in enumerate(cases):
        bad = write_lerobot(tmp_path / f"bad{number}", lengths)
        edit_table(bad / DATA, lambda t: set_column(t, column, values))
        run = cli("import", bad, "--spec", spec_file, "--out", tmp_path / "out")
        assert_one_line(run, message)
        assert str(bad / DATA) in run.stderr and not (tmp_path / "out").exists()
    # from_timestamp a frame late: the video gave the episode's frames shifted by one
    late = write_lerobot(tmp_path / "late", lengths)
    column = f"videos/{CAM}/from_timestamp"
    edit_table(late / EPISODES, lambda t: set_column(
        t, column, [v + (1 / FPS if i == 1 else 0) for i, v in
                    enumerate(t.column(column).to_pylist())]))
    run = cli("import", late, "--spec", spec_file, "--out", tmp_path / "out")
    assert_one_line(run, f"{CAM}: episode 1: 4 video frames in [0.35, 0.55) s of chunk 0 file "
                    "0, for 5 frames of the episode")
    assert not (tmp_path / "out").exists()


# ===================================================================== 8. damaged data files
def test_damaged_data_files_are_one_line(tmp_path, spec_file):
    """Tracebacks: an action row of 5 values (reshape ValueError), a state column narrower
    than info.json names (IndexError), a feature's shape a string in info.json (numpy's
    UFuncNoLoopError in the mapping). One line now, naming the file, feature and row. (A PNG
    cell of another size: see test_frames_of_another_size_than_info_json_are_refused.)"""
    lengths = [4, 3]
    cases = []
    ragged = write_lerobot(tmp_path / "ragged", lengths)

    def short_row(t):
        rows = t.column("action").to_pylist()
        rows[3] = rows[3][:5]
        return t.set_column(t.column_names.index("action"), "action",
                            pa.array(rows, pa.list_(pa.float32())))

    edit_table(ragged / DATA, short_row)
    cases.append((ragged, [], f"{ragged / DATA}: action: row 3 has 5 values, row 0 has 6"))
    narrow = write_lerobot(tmp_path / "narrow", lengths)
    edit_table(narrow / DATA, lambda t: t.set_column(
        t.column_names.index("observation.state"), "observation.state",
        fixed_list(np.array(t.column("observation.state").to_pylist(), np.float32)[:, :4])))
    cases.append((narrow, [], f"{narrow / DATA}: observation.state has 4 values a row, "
                  "meta/info.json says 6 (shape [6])"))
    shape = write_lerobot(tmp_path / "shape", lengths)
    info = json.loads((shape / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = "x"
    (shape / "meta/info.json").write_text(json.dumps(info))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("arm: {feature: action, slice: [0, 5]}\n")
    cases.append((shape, ["--mapping", mapping], "info.json: features.action.shape must be a "
                  "list of whole numbers, got 'x'"))
    for src, extra, message in cases:
        run = cli("import", src, "--spec", spec_file, "--out", tmp_path / "out", *extra)
        assert_one_line(run, message)
        assert not (tmp_path / "out").exists()


# ===================================================================== 9. --fps
def test_fps_must_be_a_whole_number_of_at_least_one(tmp_path, spec_file):
    """--fps 1e-9 rounded to 0 and passed: ZeroDivisionError with a camera, "exported ... at
    0 fps" with NaN timestamps without one."""
    src = suite_dataset(tmp_path / "ds", spec_file, [4])
    for fps in ("1e-9", "0.5", "2.5"):
        run = cli("export", src, "--out", tmp_path / "lr", "--fps", fps)
        assert_one_line(run, f"fps {float(fps):g} must be a whole number >= 1")
        assert not (tmp_path / "lr").exists()
    with pytest.raises(LeRobotError, match="fps 1e-09 must be a whole number >= 1"):
        export_lerobot(src, tmp_path / "lr", fps=1e-9)
    export_lerobot(src, tmp_path / "lr", fps=5)
    assert json.loads((tmp_path / "lr/meta/info.json").read_text())["fps"] == 5


def index_entries(root: Path) -> list:
    return json.loads((root / "index.json").read_text())["episodes"]


# ===================================================================== 10. metadata
def test_import_keeps_the_metadata_and_says_what_it_drops(tmp_path, spec_file, capsys):
    """robot_type was dropped (so100_follower, even panda after --task-text), empty operator
    and notes replaced, tasks after an episode's first dropped without a word, no tasks column
    gave the task "", an unknown task_index was accepted."""
    lengths = [4, 3, 5]
    src = write_lerobot(tmp_path / "lr", lengths)
    pq.write_table(pa.table({"task_index": [0, 1], "__index_level_0__": ["push", "lift"]}),
                   src / "meta/tasks.parquet")
    edit_table(src / EPISODES, lambda t: set_column(t, "tasks", [["push"], ["lift", "push"],
                                                                 ["push"]]))
    capsys.readouterr()
    import_lerobot(src, str(spec_file), tmp_path / "ds")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["not carried over (one task per episode is kept): episode 1 has 2 tasks: "
                   "kept 'lift', not 'push'"]
    entries = index_entries(tmp_path / "ds")
    assert [e["task"] for e in entries] == ["push", "lift", "push"]
    assert {e["robot_type"] for e in entries} == {"so100_follower"}
    export_lerobot(tmp_path / "ds", tmp_path / "lr2")
    assert json.loads((tmp_path / "lr2/meta/info.json").read_text())["robot_type"] == \
        "so100_follower"
    # no tasks column: the frames' task_index in meta/tasks.parquet
    edit_table(src / EPISODES, lambda t: t.drop_columns(["tasks"]))
    edit_table(src / DATA, lambda t: set_column(t, "task_index", [0] * 4 + [1] * 3 + [0] * 5))
    import_lerobot(src, str(spec_file), tmp_path / "ds_index")
    assert [e["task"] for e in index_entries(tmp_path / "ds_index")] == ["push", "lift", "push"]
    # a task_index that meta/tasks.parquet does not have
    edit_table(src / DATA, lambda t: set_column(t, "task_index", [0] * 7 + [5] * 5))
    run = cli("import", src, "--spec", spec_file, "--out", tmp_path / "bad")
    assert_one_line(run, "episode 2: task_index 5 is not in meta/tasks.parquet (its indices: "
                    "[0, 1])")
    assert not (tmp_path / "bad").exists()
    # an empty operator and notes stay empty; panda stays panda after --task-text
    ds = suite_dataset(tmp_path / "suite", spec_file, [4, 3])
    export_lerobot(ds, tmp_path / "lr3", task_text="push the puck to the goal")
    assert json.loads((tmp_path / "lr3/meta/info.json").read_text())["robot_type"] == "panda"
    edit_table(tmp_path / "lr3" / EPISODES, lambda t: set_column(set_column(
        t, "robot_imitation/operator", ["", "tester"]), "robot_imitation/notes", ["", "x"]))
    import_lerobot(tmp_path / "lr3", str(spec_file), tmp_path / "back")
    entries = index_entries(tmp_path / "back")
    assert [(e["operator"], e["notes"]) for e in entries] == [("", ""), ("tester", "x")]
    export_lerobot(tmp_path / "back", tmp_path / "lr4")
    assert json.loads((tmp_path / "lr4/meta/info.json").read_text())["robot_type"] == "panda"


# ===================================================================== 11. Parquet checksums
def test_a_flipped_bit_in_a_data_file_is_found(tmp_path, spec_file):
    """One flipped bit in a data file imported with exit 0 and a changed state value. Export
    writes page checksums now, and import verifies them."""
    src = suite_dataset(tmp_path / "ds", spec_file, [6, 5])
    export_lerobot(src, tmp_path / "lr")
    path = tmp_path / "lr" / DATA
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float32(103.0).tobytes())  # a state value of episode 1
    assert at > 0
    raw[at] ^= 1
    path.write_bytes(bytes(raw))
    run = cli("import", tmp_path / "lr", "--spec", spec_file, "--out", tmp_path / "back")
    assert_one_line(run, f"{path}: not a readable Parquet file")
    assert "CRC" in run.stderr or "checksum" in run.stderr.lower()
    assert not (tmp_path / "back").exists()
    for meta in (EPISODES, "meta/tasks.parquet"):  # the metadata is checked too
        assert pq.ParquetFile(tmp_path / "lr" / meta).metadata.num_rows
    episodes = tmp_path / "lr" / EPISODES
    raw = bytearray(episodes.read_bytes())
    at = raw.find(b"tester")
    raw[at] ^= 1
    episodes.write_bytes(bytes(raw))
    run = cli("import", tmp_path / "lr", "--spec", spec_file, "--out", tmp_path / "back")
    assert_one_line(run, f"{episodes}: unreadable metadata")


# ===================================================================== 12. empty, partial
def test_empty_and_partial_imports_are_said(tmp_path, spec_file):
    """0 episodes imported "imported 0 episodes", exit 0; a camera the spec has no field for
    was dropped without a word; a mapping of a low-dimensional field to a camera imported
    pixels as joint positions."""
    empty = write_lerobot(tmp_path / "empty", [3])
    edit_table(empty / EPISODES, lambda t: t.slice(0, 0))
    info = json.loads((empty / "meta/info.json").read_text())
    (empty / "meta/info.json").write_text(json.dumps({**info, "total_episodes": 0}))
    run = cli("import", empty, "--spec", spec_file, "--out", tmp_path / "out")
    assert_one_line(run, f"{empty}: no episode to import")
    assert not (tmp_path / "out").exists()
    # a second camera (a real video) that the spec does not take
    two = write_lerobot(tmp_path / "two", [4, 3])
    wrist = "observation.images.wrist"
    (two / "videos" / CAM).rename(two / "videos" / wrist)
    write_lerobot(tmp_path / "one", [4, 3])
    (tmp_path / "one" / "videos" / CAM).rename(two / "videos" / CAM)
    info = json.loads((two / "meta/info.json").read_text())
    info["features"][wrist] = info["features"][CAM]
    (two / "meta/info.json").write_text(json.dumps(info))

    def add_wrist(t):
        for name in [c for c in t.column_names if c.startswith(f"videos/{CAM}/")]:
            t = t.append_column(name.replace(CAM, wrist), t.column(name))
        return t

    edit_table(two / EPISODES, add_wrist)
    run = cli("import", two, "--spec", spec_file, "--out", tmp_path / "ds")
    assert run.returncode == 0, run.stderr
    assert f"skipped 1 feature(s) no field of spec lr_arm takes: {wrist}" in run.stdout
    # a low-dimensional field mapped to a camera
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(f"joint_pos: {{feature: {CAM}, slice: [0, 6]}}\n")
    run = cli("import", two, "--spec", spec_file, "--out", tmp_path / "out", "--mapping",
              mapping)
    assert_one_line(run, f"mapping: joint_pos: {CAM} is a camera (video), the spec's joint_pos "
                    "is low-dimensional")
    assert not (tmp_path / "out").exists()


# ===================================================================== 13. small ones
def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_empty_task_text_and_folders_left_by_a_killed_run(tmp_path, spec_file):
    """--task-text "" was replaced by the task's name without a word (refused now); a SIGKILL
    left hidden .<out>.partial-<pid> folders that nothing removed (removed now at the next run
    when their process is not running, and said; an old output a killed run was replacing is
    put back)."""
    src = suite_dataset(tmp_path / "ds", spec_file, [4, 3])
    run = cli("export", src, "--out", tmp_path / "lr", "--task-text", "")
    assert_one_line(run, "--task-text '' is empty")
    assert not (tmp_path / "lr").exists()
    dead = dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, alive.pid):
            (tmp_path / f".lr.partial-{pid}" / "data").mkdir(parents=True)
        run = cli("export", src, "--out", tmp_path / "lr")
        assert run.returncode == 0, run.stderr
        assert f"removed {tmp_path / f'.lr.partial-{dead}'}: left by process {dead}, which is " \
            "not running" in run.stderr
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
            f".lr.partial-{alive.pid}"]
    finally:
        alive.kill()
        alive.wait()
    # killed between its two renames: the old output aside, nothing at --out
    import_lerobot(tmp_path / "lr", str(spec_file), tmp_path / "back")
    (tmp_path / "back").rename(tmp_path / f".back.old-{dead}")
    run = cli("import", tmp_path / "lr", "--spec", spec_file, "--out", tmp_path / "back")
    assert run.returncode == 1 and f"put .back.old-{dead} back at {tmp_path / 'back'}" in \
        run.stderr and "exists and is not empty" in run.stderr
    assert total_episodes(tmp_path / "back") == 2
