"""rosbag2 episodes <-> LeRobotDataset v3.0, with pyarrow (Parquet) and PyAV (MP4) only.

Export (``export_lerobot``): each usable episode of a dataset (status ok; see
``data.dataset``) goes through the dataset builder, so the exported frames are exactly the
arrays a policy trains on: the spec's observations and actions, one frame per control step.

Mapping (one spec, both directions)::

    observation.state            the spec's low-dimensional observations, concatenated in spec
                                 order (float32); names: "<key>.<joint>", "<key>.x", "<key>[i]"
    observation.images.<key>     each camera field (video, H x W x C, the spec's size)
    action                       the spec's action fields, concatenated in spec order (float32)
    timestamp                    frame_index / fps (seconds from the episode's start)
    frame_index, episode_index, index, task_index, next.done    as LeRobot writes them

``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/`` (per-episode
indices, video offsets and statistics) and ``data/``/``videos/`` follow the v3.0 layout: many
episodes per file, a new file past ``data_files_size_in_mb``/``video_files_size_in_mb``, a new
chunk every ``chunks_size`` files. Episode metadata the format has no column for (success, seed,
operator, notes, the recorded episode's name and bag, steps dropped by the builder, the source
that drove each step for DAgger data) is kept in extra ``robot_imitation/...`` columns of the
episodes table; ``meta/robot_imitation.json`` keeps the spec, so an import needs no mapping.

Import (``import_lerobot``): one rosbag2 episode per LeRobot episode into a dataset folder of
the suite (dataset.yaml, index.json, bags), messages on the spec's topics stamped at the
dataset's fps, so that the dataset builder gives back the LeRobot arrays. Which LeRobot feature
fills which spec field comes from the element names (a dataset exported by this module, or any
dataset whose names match) or from a mapping file::

    # spec field: the LeRobot feature, and which of its elements (names, or [start, stop))
    joint_pos: {feature: observation.state, names: [shoulder_pan.pos, shoulder_lift.pos]}
    arm: {feature: action, slice: [0, 7]}
    front_image: {feature: observation.images.top}
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..paths import pid_running, read_yaml
from ..spec import Spec, SpecError
from .dataset import SOURCE_TOPIC, SOURCE_TYPE, DatasetError, iter_episodes

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STATE, ACTION, IMAGES = "observation.state", "action", "observation.images."
SUITE_META = "meta/robot_imitation.json"
EXTRA = "robot_imitation/"
CODECS = {"h264": ("libx264", "h264"), "av1": ("libsvtav1", "av1")}
IMAGE_STATS_FRAMES = 100  # frames per episode sampled for image statistics (as LeRobot does)


class LeRobotError(ValueError):
    """A LeRobot dataset that cannot be written or read (names the file, feature or value)."""


# ===================================================================== the mapping
@dataclass(frozen=True)
class Layout:
    """Where each spec field lives in the LeRobot features: {key: (feature, start, stop)}."""

    state: tuple   # ((key, start, stop), ...) in observation.state
    action: tuple  # ((key, start, stop), ...) in action
    images: tuple  # (key, ...): observation.images.<key>
    state_names: tuple
    action_names: tuple

    @classmethod
    def of(cls, spec: Spec) -> "Layout":
        def pack(fields):
            out, names, at = [], [], 0
            for f in fields:
                n = int(np.prod(f.shape))
                out.append((f.key, at, at + n))
                names += _element_names(f)
                at += n
            return tuple(out), tuple(names)

        state, state_names = pack(spec.low_dim_observations)
        action, action_names = pack(spec.actions)
        return cls(state, action, tuple(f.key for f in spec.image_observations),
                   state_names, action_names)


def _element_names(f) -> list:
    """LeRobot-style element names: "<key>.<joint>", "<key>.x" ... "<key>.qz", "<key>.<i>"."""
    return [n.replace("[", ".").rstrip("]") for n in f.names()]


# ===================================================================== export
@dataclass
class ExportReport:
    out: Path
    episodes: int = 0
    frames: int = 0
    skipped: dict = field(default_factory=dict)   # {reason: [episode names]}
    dropped: dict = field(default_factory=dict)   # {reason: steps} (the builder's)
    off_grid: list = field(default_factory=list)  # episodes whose steps are not on the fps grid
    bytes: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    codec: str = ""

    def describe(self) -> str:
        text = (f"exported {self.episodes} episode{'s' if self.episodes != 1 else ''} "
                f"({self.frames:,} frames at {self.fps:g} fps) to {self.out} "
                f"({self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s)")
        total = sum(len(v) for v in self.skipped.values())
        if total:
            text += f"; skipped {total}: " + ", ".join(
                f"{reason} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                for reason, names in self.skipped.items())
        if self.dropped:
            text += (f"; the builder dropped {sum(self.dropped.values()):,} steps: "
                     + ", ".join(f"{r} {n}" for r, n in self.dropped.items()))
        if self.off_grid:
            text += (f"; {len(self.off_grid)} episode(s) with steps off the {self.fps:g} fps grid "
                     f"(gaps of dropped steps; timestamps are frame_index / fps): "
                     + ", ".join(self.off_grid[:5]))
        return text


class _Stats:
    """Statistics of one feature as LeRobot keeps them: min, max, mean, std, count and the
    quantiles q01, q10, q50, q90, q99 over frames (images: per channel, in [0, 1], shape
    (C, 1, 1), from sampled frames). Per episode, and over the dataset: low-dimensional
    features exactly (their values are kept), images with the quantiles averaged over episodes
    weighted by their frames (as LeRobot aggregates them)."""

    QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)

    def __init__(self, image: bool = False):
        self.image = image
        self.values: list = []
        self.episodes: list = []  # (frames, stats) of each episode (images)

    @classmethod
    def of(cls, x: np.ndarray, frames: int, image: bool = False) -> dict:
        x = x.astype(np.float64)
        if image:  # (T, H, W, C) uint8 -> (pixels, C) in [0, 1]
            x = x.reshape(-1, x.shape[-1]) / 255.0
        q = np.quantile(x, cls.QUANTILES, axis=0)
        s = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
             **{f"q{round(p * 100):02d}": q[i] for i, p in enumerate(cls.QUANTILES)}}
        if image:
            s = {k: v[:, None, None] for k, v in s.items()}
        s["count"] = np.array([frames])
        return s

    def add(self, x: np.ndarray, frames: int) -> dict:
        s = self.of(x, frames, self.image)
        if self.image:
            self.episodes.append((frames, s))
        else:
            self.values.append(x)
        return s

    def result(self) -> dict:
        if not self.image:
            values = np.concatenate(self.values)
            return self.of(values, len(values))
        w = np.array([n for n, _ in self.episodes], np.float64)
        stack = {k: np.stack([s[k] for _, s in self.episodes]) for k in self.episodes[0][1]}
        mean = np.tensordot(w, stack["mean"], 1) / w.sum()
        second = np.tensordot(w, stack["std"] ** 2 + stack["mean"] ** 2, 1) / w.sum()
        out = {"min": stack["min"].min(0), "max": stack["max"].max(0), "mean": mean,
               "std": np.sqrt(np.maximum(second - mean ** 2, 0.0))}
        for p in self.QUANTILES:
            k = f"q{round(p * 100):02d}"
            out[k] = np.tensordot(w, stack[k], 1) / w.sum()
        out["count"] = np.array([int(w.sum())])
        return out


def _tolist(stats: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


class _Files:
    """The chunk/file numbering of data or video files (a new file past ``limit_mb``, a new
    chunk every CHUNKS_SIZE files)."""

    def __init__(self, limit_mb: float):
        self.limit = limit_mb * 1e6
        self.chunk = self.file = 0

    def next(self) -> None:
        self.file += 1
        if self.file >= CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0


@contextlib.contextmanager
def _own_scheduling():
    """Keep the calling thread's scheduling policy across encoder calls. The SVT-AV1 encoder
    (libsvtav1) makes the thread that opens it SCHED_FIFO at priority 99 where it may (as root):
    a trainer or exporter left real-time after an export starves a robot computer, and every
    process it starts inherits the policy (measured: a test run whose two busy-loop processes
    inherited it stalled past 90 minutes on 2 cores)."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):  # no such calls on this platform
        yield
        return
    try:
        yield
    finally:
        try:
            if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
                os.sched_setscheduler(0, policy, param)
        except OSError:
            pass


class _VideoWriter:
    """One camera's MP4 files: episodes appended, frame i of a file at pts i (time base
    1/fps), so frame times are exact multiples of 1/fps. Every encoder call keeps the caller's
    scheduling policy (``_own_scheduling``)."""

    def __init__(self, root: Path, key: str, fps: int, codec: str, limit_mb: float, crf: int):
        self.root, self.key, self.fps = root, key, fps
        self.codec, self.crf = codec, crf
        self.files = _Files(limit_mb)
        self.container = self.stream = None
        self.frames = 0
        self.path: Path | None = None

    def _open(self, height: int, width: int) -> None:
        import av

        self.path = self.root / VIDEO_PATH.format(video_key=self.key,
                                                  chunk_index=self.files.chunk,
                                                  file_index=self.files.file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        encoder = CODECS[self.codec][0]
        options = {"g": "2", "crf": str(self.crf)}
        if encoder == "libx264":
            options["preset"] = "veryfast"
        else:
            options["preset"] = "10"
        self.stream = self.container.add_stream(encoder, rate=self.fps, options=options)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        self.time_base = Fraction(1, self.fps)
        self.frames = 0

    def add(self, frames: np.ndarray) -> tuple:
        """Append an episode's frames (T, H, W, C uint8); (chunk, file, from_s, to_s)."""
        import av

        # the MP4 is created at the encoder's first packet: not yet after a few frames
        if self.container is not None and self.path.exists() and \
                self.path.stat().st_size > self.files.limit:
            self.close()
            self.files.next()
        if self.container is None:
            self._open(frames.shape[1], frames.shape[2])
        start = self.frames
        fmt = "rgb24" if frames.shape[-1] == 3 else "gray"
        with _own_scheduling():
            for img in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img if fmt == "rgb24"
                                                                        else img[..., 0]),
                                                   format=fmt)
                frame.pts = self.frames
                frame.time_base = self.time_base
                self.container.mux(self.stream.encode(frame))
                self.frames += 1
        return (self.files.chunk, self.files.file, start / self.fps, self.frames / self.fps)

    def info(self, shape: tuple) -> dict:
        return {"video.height": int(shape[0]), "video.width": int(shape[1]),
                "video.codec": CODECS[self.codec][1], "video.pix_fmt": "yuv420p"
                if shape[0] % 2 == 0 and shape[1] % 2 == 0 else "yuv444p",
                "video.is_depth_map": False, "video.fps": self.fps,
                "video.channels": int(shape[2]), "has_audio": False}

    def close(self) -> None:
        if self.container is not None:
            with _own_scheduling():
                self.container.mux(self.stream.encode())
                self.container.close()
            self.container = None


def _apart(source, out: Path) -> None:
    """``LeRobotError`` when ``out`` is ``source``, inside it or holds it (with --overwrite:
    the output is written elsewhere and replaces ``out``, which would delete what it reads
    from; without it a non-empty ``out`` is refused anyway)."""
    src, dst = Path(source).resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        where = "is" if dst == src else "is inside" if src in dst.parents else "holds"
        raise LeRobotError(f"--out {out} {where} the source {source}: choose a folder apart "
                           "from it (the output replaces --out)")


def _output_folder(source, out, overwrite: bool) -> Path:
    """``out`` absolute, its symbolic links resolved: the folder replaced is the one it
    names, and the temporary folder is made next to it. ``LeRobotError`` for an output that
    would replace the source (``_apart``), the current folder or a folder holding it, or that
    names no folder (the root)."""
    given = Path(out)
    out = given.resolve()
    if not out.name:
        raise LeRobotError(f"--out {given} is the root folder {out}: choose a folder below it")
    if overwrite and source is not None:
        _apart(source, given)
    for line in _clean_stale(out):
        print(line, file=sys.stderr)
    cwd = Path.cwd()
    if out.exists() and (out == cwd or out in cwd.parents):
        raise LeRobotError(f"--out {given} {'is' if out == cwd else 'holds'} the current folder "
                           f"{cwd}: the output replaces --out; choose a folder apart from it")
    return out


def _clean_stale(out: Path) -> list:
    """The temporary folders a killed export or import left next to ``out`` (``.<name>.
    partial-<pid>``, ``.<name>.old-<pid>``), of processes no longer running: a partial one is
    deleted, an old output is put back at ``out`` if nothing is there (the process stopped
    between its two renames), else deleted. One line for each, to say so."""
    said = []
    prefix = f".{out.name}."
    for path in sorted(out.parent.glob(f"{glob.escape(prefix)}*-*")):
        kind, _, pid = path.name[len(prefix):].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or pid_running(int(pid)):
            continue
        if kind == "old" and not out.exists() and not out.is_symlink():
            os.replace(path, out)
            said.append(f"put {path.name} back at {out}: the output that process {pid} (not "
                        "running) was replacing")
        else:
            _remove(path)
            said.append(f"removed {path}: left by process {pid}, which is not running")
    return said


    return True


def export_lerobot(dataset, out, spec: Spec | str | None = None, fps: float | None = None,
                   task_text: str | None = None, robot_type: str | None = None,
                   codec: str = "h264", crf: int = 18, include_interrupted: bool = False,
                   overwrite: bool = False, data_file_mb: float = DATA_FILE_MB,
                   video_file_mb: float = VIDEO_FILE_MB, cache: bool = True,
                   progress=None) -> ExportReport:
    """Write the usable episodes of ``dataset`` as a LeRobotDataset v3.0 at ``out``.

    ``fps`` defaults to the spec's control rate; a lower one must divide it (every k-th step is
    kept). ``task_text``: the task's description for every episode (default: the episode's
    task name as recorded, else the spec's name). ``cache``: take the episodes the dataset
    builder has cached from its cache (False: decode every bag). The folder is written under a
    temporary name and moved into place at the end: a failed export leaves nothing
    half-written at ``out``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    if task_text is not None and not task_text.strip():
        raise LeRobotError(f"--task-text {task_text!r} is empty: give the task's description, "
                           "or leave it out for the recorded task's name")
    out = _output_folder(dataset, out, overwrite)
    if codec not in CODECS:
        raise LeRobotError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
    if not 0 <= crf <= 51:
        raise LeRobotError(f"crf must be in [0, 51], not {crf}")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise LeRobotError(f"{out} exists and is not empty (choose another --out, or "
                           "--overwrite)")
    spec, skipped, total, episodes = iter_episodes(dataset, spec, include_interrupted,
                                                   cache)
    rate = float(spec.control_rate)
    fps = rate if fps is None else float(fps)
    # 1e-9 passed a check of whole numbers (it rounds to 0): a division by zero, NaN times
    if not (math.isfinite(fps) and fps >= 1 and abs(fps - round(fps)) <= 1e-9):
        raise LeRobotError(f"fps {fps:g} must be a whole number >= 1 (video frame rates of "
                           "LeRobot datasets are)")
    step = rate / fps
    if not math.isfinite(step) or abs(step - round(step)) > 1e-9 or round(step) < 1:
        raise LeRobotError(f"fps {fps:g} must divide the spec's control rate {rate:g} Hz "
                           "(frames are every k-th control step)")
    step = int(round(step))
    fps = int(round(fps))
    layout = Layout.of(spec)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report = ExportReport(out=out, skipped=skipped, fps=fps, codec=codec)
    videos = {k: _VideoWriter(tmp, IMAGES + k, fps, codec, video_file_mb, crf)
              for k in layout.images}
    image_shapes = {f.key: f.shape for f in spec.image_observations}
    # no observation.state where the spec observes cameras alone (a list of size 0 is no
    # Arrow type)
    stats = {**({STATE: _Stats()} if layout.state else {}), ACTION: _Stats(),
             **{IMAGES + k: _Stats(image=True) for k in layout.images}}
    default_stats = {k: _Stats() for k in ("timestamp", "frame_index", "episode_index", "index",
                                            "task_index")}
    tasks: dict = {}
    episodes_rows: list = []
    data_files = _Files(data_file_mb)
    writer = None
    written = 0.0
    index = 0
    dropped: dict = {}
    try:
        for number, (episode, entry) in enumerate(episodes):
            keep = np.arange(0, len(episode), step)
            n = len(keep)
            t = episode.t[keep]
            if n > 1 and np.max(np.abs(np.diff(t) * fps - 1.0)) > 0.5:
                report.off_grid.append(episode.name)
            for reason, k in (episode.drop_reasons or {}).items():
                dropped[reason] = dropped.get(reason, 0) + k
            text = task_text or entry.get("task") or spec.name
            task_index = tasks.setdefault(text, len(tasks))
            state = (np.concatenate([episode.obs[k][keep] for k, _, _ in layout.state], axis=1)
                     if layout.state else np.zeros((n, 0)))
            action = episode.actions[keep]
            frame_index = np.arange(n, dtype=np.int64)
            columns = {
                "timestamp": (frame_index / fps).astype(np.float32),
                "frame_index": frame_index,
                "episode_index": np.full(n, number, np.int64),
                "index": np.arange(index, index + n, dtype=np.int64),
                "task_index": np.full(n, task_index, np.int64),
            }
            table = pa.table({
                **({STATE: _fixed_list(state.astype(np.float32))} if layout.state else {}),
                ACTION: _fixed_list(action.astype(np.float32)),
                **{k: pa.array(v) for k, v in columns.items()},
                "next.done": pa.array(frame_index == n - 1),
            })
            if writer is not None and written > data_files.limit:
                writer.close()
                writer = None
                data_files.next()
            if writer is None:
                path = tmp / DATA_PATH.format(chunk_index=data_files.chunk,
                                              file_index=data_files.file)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, table.schema, write_page_checksum=True)
                written = 0.0
            writer.write_table(table)  # one row group per episode
            written += table.nbytes
            row = {"episode_index": number, "tasks": [text], "length": n,
                   "data/chunk_index": data_files.chunk, "data/file_index": data_files.file,
                   "dataset_from_index": index, "dataset_to_index": index + n}
            for k, video in videos.items():
                frames = episode.obs[k][keep]
                chunk, file, start, stop = video.add(frames)
                row.update({f"videos/{IMAGES + k}/chunk_index": chunk,
                            f"videos/{IMAGES + k}/file_index": file,
                            f"videos/{IMAGES + k}/from_timestamp": start,
                            f"videos/{IMAGES + k}/to_timestamp": stop})
                sample = frames[np.linspace(0, n - 1, min(n, IMAGE_STATS_FRAMES)).astype(int)]
                for s, v in stats[IMAGES + k].add(sample, n).items():
                    row[f"stats/{IMAGES + k}/{s}"] = np.asarray(v).tolist()
            for name, values in ((STATE, state), (ACTION, action)):
                if name not in stats:
                    continue
                for s, v in stats[name].add(values, n).items():
                    row[f"stats/{name}/{s}"] = np.asarray(v).tolist()
            for name, values in columns.items():
                for s, v in default_stats[name].add(values[:, None], n).items():
                    row[f"stats/{name}/{s}"] = np.asarray(v).tolist()
            row.update({
                f"{EXTRA}name": episode.name,
                f"{EXTRA}bag": Path(entry["bag"]).relative_to(Path(dataset)).as_posix()
                if Path(entry["bag"]).is_relative_to(Path(dataset)) else str(entry["bag"]),
                # as the builder reads it (an "ok" the recorder marked interrupted is not)
                f"{EXTRA}status": "interrupted" if entry.get("status") == "ok" and
                entry.get("interrupted") else str(entry.get("status") or ""),
                f"{EXTRA}success": entry.get("success"),
                f"{EXTRA}seed": entry.get("seed"),
                f"{EXTRA}operator": str(entry.get("operator") or ""),
                f"{EXTRA}notes": str(entry.get("notes") or ""),
                f"{EXTRA}dropped_steps": int(episode.dropped),
                f"{EXTRA}executed": ([str(x) for x in episode.executed[keep]]
                                     if episode.executed is not None else []),
            })
            episodes_rows.append(row)
            index += n
            if progress:
                progress(number + 1, total, episode.name)
        if not episodes_rows:
            raise LeRobotError(f"{dataset}: no episode to export")
    except (DatasetError, SpecError) as exc:
        _abandon(writer, videos, tmp)
        raise LeRobotError(str(exc)) from None
    except OSError as exc:  # a full disk, an unwritable folder (the reading side raised above)
        _abandon(writer, videos, tmp)
        raise LeRobotError(f"writing {out}: {exc.strerror or exc}") from None
    except BaseException:
        _abandon(writer, videos, tmp)
        raise
    try:
        writer.close()
        for video in videos.values():
            video.close()
        _write_meta(tmp, spec, layout, fps, episodes_rows, tasks, stats, default_stats, videos,
                    image_shapes, robot_type if robot_type is not None else _robot_of(dataset),
                    data_file_mb, video_file_mb, step)
    except OSError as exc:
        _abandon(None, videos, tmp)
        raise LeRobotError(f"writing {out}: {exc.strerror or exc}") from None
    except BaseException:
        _abandon(None, videos, tmp)
        raise
    _move_into_place(tmp, out)
    report.episodes, report.frames, report.dropped = len(episodes_rows), index, dropped
    report.bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    report.seconds = time.perf_counter() - t0
    return report


def _move_into_place(tmp: Path, out: Path) -> None:
    """The complete output ``tmp`` to ``out``. An ``out`` already there is renamed aside
    (``.<name>.old-<pid>``) first and deleted only once ``tmp`` is in place: whatever stops
    the process, the old or the new output is kept whole. ``LeRobotError`` when the move
    fails (the old output back in place, ``tmp`` deleted)."""
    old = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as exc:  # an error, or a stop between the two renames
        if old is not None and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise LeRobotError(f"writing {out}: {exc.strerror or exc}") from None
        raise
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fixed_list(values: np.ndarray):
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _abandon(writer, videos: dict, tmp: Path) -> None:
    for closer in [writer] + list(videos.values()):
        try:
            if closer is not None:
                closer.close()
        except Exception:  # noqa: BLE001 - already failing; the folder goes anyway
            pass
    shutil.rmtree(tmp, ignore_errors=True)


def _robot_of(dataset) -> str | None:
    """The robot_type an imported dataset keeps, else the robot of the recorded task (by the
    dataset's task name), else None."""
    try:
        from ..sim.tasks import TaskConfig

        entries = json.loads((Path(dataset) / "index.json").read_text())["episodes"]
        kept = next((e["robot_type"] for e in entries if e.get("robot_type")), None)
        if kept:  # an imported dataset: the robot_type it was imported with
            return str(kept)
        task = next((e.get("task") for e in entries if e.get("task")), None)
        return TaskConfig.load(task).robot if task else None
    except Exception:  # noqa: BLE001 - robot_type is optional in the format
        return None


def _write_meta(root: Path, spec: Spec, layout: Layout, fps: int, rows: list, tasks: dict,
                stats: dict, default_stats: dict, videos: dict, image_shapes: dict,
                robot_type, data_file_mb: float, video_file_mb: float, step: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {
        **({STATE: {"dtype": "float32", "shape": [len(layout.state_names)],
                    "names": list(layout.state_names)}} if layout.state else {}),
        ACTION: {"dtype": "float32", "shape": [len(layout.action_names)],
                 "names": list(layout.action_names)},
    }
    for k, video in videos.items():
        shape = image_shapes[k]
        features[IMAGES + k] = {"dtype": "video", "shape": list(shape),
                                "names": ["height", "width", "channels"],
                                "info": video.info(shape)}
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "float32" if name == "timestamp" else "int64",
                          "shape": [1], "names": None}
    features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    total = sum(r["length"] for r in rows)
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(rows),
        "total_frames": total,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": data_file_mb,
        "video_files_size_in_mb": video_file_mb,
        "fps": fps,
        "splits": {"train": f"0:{len(rows)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "features": features,
    }
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "info.json").write_text(json.dumps(info, indent=4) + "\n")
    all_stats = {**{k: stats[k].result() for k in (STATE, ACTION) if k in stats},
                 **{IMAGES + k: stats[IMAGES + k].result() for k in videos},
                 **{k: s.result() for k, s in default_stats.items()}}
    (meta / "stats.json").write_text(json.dumps({k: _tolist(v) for k, v in all_stats.items()},
                                                indent=4) + "\n")
    # tasks.parquet: the task strings as the (pandas) index "task", and task_index
    names = sorted(tasks, key=tasks.get)
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()),
                      "task": pa.array(names, pa.string())})
    table = table.replace_schema_metadata({b"pandas": json.dumps(_pandas_meta(
        "task", [("task_index", "int64", "int64"), ("task", "unicode", "object")])).encode()})
    pq.write_table(table, meta / "tasks.parquet", write_page_checksum=True)
    for r in rows:
        r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = 0, 0
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, write_page_checksum=True)
    (root / SUITE_META).write_text(json.dumps({
        "format": "robot_imitation.lerobot_export", "version": 1, "spec": spec.to_dict(),
        "spec_fingerprint": spec.fingerprint(), "frame_every_steps": step,
        "layout": {STATE: [list(x) for x in layout.state], ACTION: [list(x) for x in
                                                                    layout.action],
                   "images": {k: IMAGES + k for k in layout.images}},
    }, indent=1) + "\n")


def _pandas_meta(index: str, columns: list) -> dict:
    """The pandas metadata pyarrow writes for a frame with a named string index, so that
    ``pandas.read_parquet`` restores ``index`` as the index (LeRobot reads tasks that way)."""
    return {"index_columns": [index], "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
         "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": name, "field_name": name, "pandas_type": pandas_type,
                     "numpy_type": numpy_type, "metadata": None}
                    for name, pandas_type, numpy_type in columns],
        "creator": {"library": "pyarrow", "version": "26.0.1"}, "pandas_version": "2.2.3"}


# ===================================================================== reading a LeRobot dataset
@dataclass
class LeRobotDataset:
    """A LeRobotDataset v3.0 folder, read with pyarrow and PyAV: ``info`` (meta/info.json),
    ``episodes`` (one dict per episode of meta/episodes, in episode order), ``tasks``
    ({task_index: text}); ``frames(i)`` gives episode i's columns and decoded video frames."""

    root: Path
    info: dict
    episodes: list
    tasks: dict
    suite: dict | None = None  # meta/robot_imitation.json, when this suite wrote the dataset
    _data: dict = field(default_factory=dict, repr=False)
    _videos: dict = field(default_factory=dict, repr=False)

    @property
    def fps(self) -> int:
        return self.info["fps"]

    @property
    def features(self) -> dict:
        return self.info["features"]

    def video_keys(self) -> list:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    def frames(self, i: int, keys=None) -> dict:
        """Episode i: {feature: array (T, ...)} for the features ``keys`` (default: every
        feature; videos decoded, uint8, of the size info.json states)."""
        ep = self.episodes[i]
        n = int(ep["length"])
        path, table = self._data_file(int(ep["data/chunk_index"]),
                                      int(ep["data/file_index"]))
        e = ep["episode_index"]
        rows = np.flatnonzero(table["episode_index"] == e)
        if len(rows) != n:
            raise LeRobotError(f"{self.root}: episode {e} has {len(rows)} "
                               f"frames in its data file, meta/episodes says {n}")
        # in frame order, whatever the rows' order in the file
        index = table["frame_index"][rows].astype(np.int64).reshape(-1)
        order = np.argsort(index, kind="stable")
        rows, index = rows[order], index[order]
        if not np.array_equal(index, np.arange(n)):
            k = int(np.argmax(index != np.arange(n)))
            what = (f"frame_index {index[k]} twice" if k and index[k] == index[k - 1] else
                    f"no frame_index {k}")
            raise LeRobotError(f"{path}: episode {e}: {what} (its {n} rows must be frames "
                               f"0..{n - 1})")
        if "timestamp" in table:
            t = table["timestamp"][rows].astype(np.float64).reshape(-1)
            if n > 1 and not np.all(np.diff(t) > 0):
                k = int(np.argmax(np.diff(t) <= 0)) + 1
                raise LeRobotError(f"{path}: episode {e}: timestamp of frame {k} ({t[k]:g} s) "
                                   f"is not after frame {k - 1}'s ({t[k - 1]:g} s)")
        out = {k: v[rows] for k, v in table.items()}
        for key, ft in self.features.items():  # as many values a row as info.json says
            if key in out and (keys is None or key in keys) and \
                    ft.get("dtype") not in ("video", "image"):
                have, want = int(np.prod(out[key].shape[1:])), int(np.prod(ft["shape"]))
                if have != want:
                    raise LeRobotError(f"{path}: {key} has {have} values a row, "
                                       f"meta/info.json says {want} (shape {ft['shape']})")
        for key in self.video_keys():
            if keys is None or key in keys:
                out[key] = self._video_frames(key, ep, n)
                self._check_size(key, out[key], ep)
        for key in self.image_keys():
            if keys is not None and key not in keys:
                continue
            if key not in out:
                raise LeRobotError(f"{self.root}: image feature {key} has no column in the data")
            out[key] = _decode_images(out[key], key, ep["episode_index"],
                                      _camera_hw(key, self.features[key]))
        return out

    def _check_size(self, key: str, frames: np.ndarray, ep: dict) -> None:
        """``LeRobotError`` for video frames of another size than info.json's (the builder
        would resize them without a word)."""
        h, w = _camera_hw(key, self.features[key])
        if frames.shape[1:3] != (h, w):
            raise LeRobotError(f"{key}: episode {ep['episode_index']}: the video's frames are "
                               f"{frames.shape[2]}x{frames.shape[1]}, meta/info.json says "
                               f"{w}x{h}")

    def image_keys(self) -> list:
        """Camera features stored as images (PNG or JPEG bytes in the Parquet)."""
        return [k for k, f in self.features.items() if f.get("dtype") == "image"]

    def _pattern(self, key: str, **values) -> str:
        """info.json's path pattern ``key`` filled in; ``LeRobotError`` for another placeholder
        than LeRobot's."""
        pattern = self.info.get(key)
        try:
            return str(pattern).format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise LeRobotError(f"{self.root / 'meta' / 'info.json'}: {key} {pattern!r} is not a "
                               f"path pattern of {{{'}, {'.join(values)}}}: {exc!r}") from None

    def _data_file(self, chunk: int, file: int) -> tuple:
        """(path, {column: array}) of a data file."""
        import pyarrow.parquet as pq

        if (chunk, file) not in self._data:
            path = self.root / self._pattern("data_path", chunk_index=chunk, file_index=file)
            if not path.is_file():
                raise LeRobotError(f"{path}: data file missing")
            try:
                table = pq.read_table(path, page_checksum_verification=True)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
                raise LeRobotError(f"{path}: not a readable Parquet file: {exc}") from None
            self._data.clear()  # one data file at a time (episodes are read in order)
            self._data[(chunk, file)] = path, {name: _column(table, name, path) for name in
                                               table.column_names}
        return self._data[(chunk, file)]

    def _video_frames(self, key: str, ep: dict, n: int) -> np.ndarray:
        """Episode ``ep``'s frames of camera ``key``: only its part of the video file is
        decoded (a file holds many episodes), into one array."""
        chunk = int(ep[f"videos/{key}/chunk_index"])
        file = int(ep[f"videos/{key}/file_index"])
        start = float(ep[f"videos/{key}/from_timestamp"])
        stop = ep.get(f"videos/{key}/to_timestamp")
        stop = start + n / self.fps if stop is None else float(stop)
        path = self.root / self._pattern("video_path", video_key=key, chunk_index=chunk,
                                         file_index=file)
        if not path.is_file():
            raise LeRobotError(f"{path}: video of {key} missing (episode "
                               f"{ep['episode_index']})")
        # the frames in [from_timestamp, to_timestamp), within LeRobot's tolerance
        tolerance, half = 1e-4, 0.5 / self.fps
        times, frames = decode_video(path, start - tolerance, stop - tolerance, limit=n)
        if len(times) != n:
            raise LeRobotError(f"{key}: episode {ep['episode_index']}: {len(times)} video "
                               f"frames in [{start:g}, {stop:g}) s of chunk {chunk} file "
                               f"{file}, for {n} frames of the episode")
        want = start + np.arange(n) / self.fps
        off = np.abs(times - want)
        if off.max() > half:
            bad = int(np.argmax(off))
            raise LeRobotError(f"{key}: episode {ep['episode_index']}: no video frame within "
                               f"half a frame of {want[bad]:.4f} s in chunk {chunk} file {file}")
        return frames


def _decode_images(cells, key: str, episode, hw: tuple) -> np.ndarray:
    """Image cells ({bytes, path} as LeRobot writes them) to (T, H, W, 3) uint8; each of the
    size ``hw`` (info.json's)."""
    import io

    from PIL import Image, UnidentifiedImageError

    frames = np.empty((len(cells), *hw, 3), np.uint8)
    for k, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise LeRobotError(f"{key}: episode {episode}, frame {k}: no image bytes in the data "
                               "(images stored as separate files are not read)")
        try:
            img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise LeRobotError(f"{key}: episode {episode}, frame {k}: not an image: {exc}") \
                from None
        if img.shape[:2] != tuple(hw):
            raise LeRobotError(f"{key}: episode {episode}, frame {k}: the image is "
                               f"{img.shape[1]}x{img.shape[0]}, meta/info.json says "
                               f"{hw[1]}x{hw[0]}")
        frames[k] = img
    return frames


def _column(table, name: str, path: Path) -> np.ndarray:
    """A column as an array: (rows, values) for a list column, whose rows must all hold as
    many values (``LeRobotError`` naming the file, the column and the row otherwise)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or \
            pa.types.is_large_list(col.type):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise LeRobotError(f"{path}: {name}: row {row} holds no values (null)")
        sizes = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(sizes) and np.any(sizes != sizes[0]):
            row = int(np.argmax(sizes != sizes[0]))
            raise LeRobotError(f"{path}: {name}: row {row} has {sizes[row]} values, row 0 "
                               f"has {sizes[0]}")
        values = col.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(col), -1) if len(col) else values.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def decode_video(path: Path, start: float = 0.0, stop: float = math.inf,
                 limit: int | None = None) -> tuple:
    """(frame times in seconds, frames (N, H, W, 3) uint8) of the frames of an MP4 whose time
    is in [start, stop), in presentation order. Decoding starts at the keyframe before
    ``start`` and ends at the first frame at or past ``stop``: an episode of a file of many is
    decoded alone. ``limit``: at most that many frames are kept, in one array allocated once
    (the times of all those in the range are given)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            got = None
            if start > 0:  # from the keyframe at or before start
                container.seek(max(0, int(start / stream.time_base)), stream=stream)
                got = _decode_range(container, stream, start, stop, limit, seek=True)
                if got is None:  # the seek went past start: from the beginning
                    container.seek(0, stream=stream)
            if got is None:
                got = _decode_range(container, stream, start, stop, limit, seek=False)
    except av.error.FFmpegError as exc:
        raise LeRobotError(f"{path}: cannot decode the video: {exc}") from None
    times, frames = got
    if limit is None and not len(times):
        raise LeRobotError(f"{path}: the video has no frames")
    return times, frames


def _decode_range(container, stream, start: float, stop: float, limit, seek: bool):
    """``decode_video``'s (times, frames) from the container's position; None when a seek
    landed past ``start``."""
    times, kept, frames = [], [], None
    for frame in container.decode(stream):
        t = float(frame.pts * frame.time_base)
        if seek and t > start:  # the first frame after the seek
            return None
        seek = False
        if t < start:
            continue
        if t >= stop:
            break
        times.append(t)
        img = frame.to_ndarray(format="rgb24")
        if limit is None:
            kept.append(img)
        elif len(times) <= limit:
            if frames is None:
                frames = np.empty((limit, *img.shape), np.uint8)
            frames[len(times) - 1] = img
    times = np.asarray(times, np.float64)
    if limit is None:  # a whole file: in presentation order
        order = np.argsort(times, kind="stable")
        return times[order], np.stack(kept)[order] if kept else np.zeros((0, 0, 0, 3), np.uint8)
    if frames is None:
        return times, np.zeros((0, 0, 0, 3), np.uint8)
    return times, frames[:min(len(times), limit)]


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``LeRobotError`` naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeRobotError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise LeRobotError(f"{path}: not a JSON object (a {type(data).__name__})")
    return data


def open_lerobot(root) -> LeRobotDataset:
    """A LeRobotDataset v3.0 folder; ``LeRobotError`` for another version, a missing or
    broken file, or metadata that does not add up."""
    import pyarrow.parquet as pq

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise LeRobotError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    info = _read_json(info_path)
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        hint = (" (convert it with LeRobot's convert_dataset_v21_to_v30 first)"
                if str(version).startswith("v2") else "")
        raise LeRobotError(f"{root}: LeRobotDataset version {version} is not supported: this "
                           f"reads {CODEBASE_VERSION}{hint}")
    for key in ("fps", "features", "total_episodes"):
        if key not in info:
            raise LeRobotError(f"{info_path}: no {key!r}")
    # the fields read, of the types LeRobot writes (others were tracebacks further on)
    for key, ok, what in (
            ("fps", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
             and 0 < v < math.inf, "a positive number"),
            ("total_episodes", lambda v: isinstance(v, int) and not isinstance(v, bool)
             and v >= 0, "a whole number"),
            ("features", lambda v: isinstance(v, dict)
             and all(isinstance(f, dict) for f in v.values()), "a mapping of feature mappings"),
            ("data_path", lambda v: isinstance(v, str), "a path pattern")):
        if key in info and not ok(info[key]):
            raise LeRobotError(f"{info_path}: {key} must be {what}, got {info[key]!r:.60}")
    for name, ft in info["features"].items():
        shape = ft.get("shape")
        if not (isinstance(shape, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
            raise LeRobotError(f"{info_path}: features.{name}.shape must be a list of whole "
                               f"numbers, got {shape!r:.60}")
    info.setdefault("data_path", DATA_PATH)  # LeRobot's loader does not need it either
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotError(f"{root}: no meta/episodes/chunk-*/file-*.parquet")
    episodes = []
    reading = root
    try:  # page checksums verified where the writer wrote them
        for reading in files:
            episodes += pq.read_table(reading, page_checksum_verification=True).to_pylist()
        reading = root / "meta" / "tasks.parquet"
        tasks_table = pq.read_table(reading, page_checksum_verification=True).to_pylist()
    except FileNotFoundError as exc:
        raise LeRobotError(f"{root}: {exc.filename or exc} missing") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise LeRobotError(f"{reading}: unreadable metadata: {exc}") from None
    episodes.sort(key=lambda e: e["episode_index"])
    if len(episodes) != info["total_episodes"]:
        raise LeRobotError(f"{root}: meta/episodes lists {len(episodes)} episodes, info.json "
                           f"says {info['total_episodes']}")
    tasks = {}
    for row in tasks_table:
        text = row.get("task", row.get("__index_level_0__"))
        tasks[int(row["task_index"])] = text
    suite = None
    if (root / SUITE_META).is_file():
        suite = _read_json(root / SUITE_META)
    return LeRobotDataset(root=root, info=info, episodes=episodes, tasks=tasks, suite=suite)


# ===================================================================== import
@dataclass
class ImportReport:
    out: Path
    episodes: int = 0
    frames: int = 0
    mapping: dict = field(default_factory=dict)  # {spec key: "feature[indices]"}
    seconds: float = 0.0
    not_carried: list = field(default_factory=list)  # what the episodes lost (said on stderr)
    skipped: list = field(default_factory=list)  # features no spec field takes
    spec_name: str = ""

    def describe(self) -> str:
        text = (f"imported {self.episodes} episode{'s' if self.episodes != 1 else ''} "
                f"({self.frames:,} frames) into {self.out} ({self.seconds:.1f} s); "
                + ", ".join(f"{k} <- {v}" for k, v in self.mapping.items()))
        if self.skipped:
            text += (f"; skipped {len(self.skipped)} feature(s) no field of spec "
                     f"{self.spec_name} takes: " + ", ".join(self.skipped))
        return text


def resolve_mapping(spec: Spec, data: LeRobotDataset, mapping: dict | None = None) -> dict:
    """{spec field key: (feature, element indices or None for a whole image)}.

    A field in ``mapping`` ({key: {feature, names | slice}}) is taken from there; any other is
    found by its element names (``Layout``'s) among the features' names, images as
    ``observation.images.<key>``. Unknown keys, missing features and sizes that do not fit the
    spec are errors naming them."""
    mapping = dict(mapping or {})
    fields = {f.key: f for f in spec.fields}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise LeRobotError(f"mapping: {unknown} are not fields of spec {spec.name} (its fields: "
                           f"{sorted(fields)})")
    features = data.features
    out = {}
    for key, f in fields.items():
        entry = mapping.get(key)
        if f.is_image:
            feature = (entry or {}).get("feature", IMAGES + key)
            ft = features.get(feature)
            if ft is None or ft.get("dtype") not in ("video", "image"):
                raise LeRobotError(f"{key}: no camera feature {feature!r} in {data.root} (its "
                                   f"cameras: {data.video_keys() + data.image_keys()}); map it "
                                   "in a mapping file")
            _camera_hw(feature, ft)
            out[key] = (feature, None)
            continue
        size = int(np.prod(f.shape))
        names = _element_names(f)
        if entry is not None:
            feature = entry.get("feature")
            ft = features.get(feature)
            if ft is None:
                raise LeRobotError(f"mapping: {key}: feature {feature!r} is not in {data.root} "
                                   f"(its features: {sorted(features)})")
            if ft.get("dtype") in ("video", "image"):
                raise LeRobotError(f"mapping: {key}: {feature} is a camera ({ft['dtype']}), "
                                   f"the spec's {key} is low-dimensional ({f.type}.{f.field})")
            width = int(np.prod(ft["shape"]))
            if "names" in entry:
                have = list(ft.get("names") or [])
                missing = [n for n in entry["names"] if n not in have]
                if missing:
                    raise LeRobotError(f"mapping: {key}: {feature} has no elements {missing}")
                idx = [have.index(n) for n in entry["names"]]
            elif "slice" in entry:
                lo, hi = (int(v) for v in entry["slice"])
                if not 0 <= lo < hi <= width:
                    raise LeRobotError(f"mapping: {key}: slice [{lo}, {hi}) is outside "
                                       f"{feature}'s {width} elements")
                idx = list(range(lo, hi))
            else:
                if width != size:
                    raise LeRobotError(f"mapping: {key}: {feature} has {width} elements, the "
                                       f"spec's {key} {size}: give names or slice")
                idx = list(range(width))
            if len(idx) != size:
                raise LeRobotError(f"mapping: {key}: {len(idx)} elements of {feature} for the "
                                   f"spec's {size} ({f.type}.{f.field})")
            out[key] = (feature, idx)
            continue
        for feature, ft in features.items():
            if ft.get("dtype") in ("video", "image"):
                continue
            have = list(ft.get("names") or []) if isinstance(ft.get("names"), list) else []
            if have and all(n in have for n in names):
                out[key] = (feature, [have.index(n) for n in names])
                break
        else:
            raise LeRobotError(f"{key}: no feature of {data.root} has the elements {names[:3]}"
                               f"{'...' if len(names) > 3 else ''} (features: "
                               f"{sorted(k for k in features if k not in _DEFAULT)}); map it "
                               "in a mapping file (--mapping)")
    return out


_DEFAULT = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _camera_hw(feature: str, ft: dict) -> tuple:
    """(height, width) of a camera feature: shape (H, W, 3), or (3, H, W) where its names
    say the channels come first."""
    shape = tuple(int(v) for v in ft.get("shape", ()))
    names = ft.get("names") if isinstance(ft.get("names"), list) else []
    if len(shape) == 3 and names[:1] in (["channel"], ["channels"]) and shape[0] == 3:
        return shape[1:]
    if len(shape) == 3 and shape[2] == 3:
        return shape[:2]
    raise LeRobotError(f"{feature} has shape {list(shape)}: an RGB camera (height, width, 3) "
                       "is needed")


def read_mapping(path) -> dict:
    """A mapping file (YAML): {spec key: {feature, names | slice}}."""
    path = Path(path)
    data = read_yaml(path, LeRobotError) or {}
    if not isinstance(data, dict):
        raise LeRobotError(f"{path}: a mapping is {{spec field: {{feature, names | slice}}}}")
    for key, entry in data.items():
        if not isinstance(entry, dict) or "feature" not in entry or \
                not set(entry) <= {"feature", "names", "slice"}:
            raise LeRobotError(f"{path}: {key}: give {{feature: ..., names: [...] | slice: "
                               f"[start, stop]}}, not {entry!r}")
        cut = entry.get("slice")
        if cut is not None and not (isinstance(cut, list) and len(cut) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in cut)):
            raise LeRobotError(f"{path}: {key}: slice must be [start, stop], two whole numbers "
                               f">= 0, not {cut!r}")
        names = entry.get("names")
        if names is not None and not (isinstance(names, list) and all(
                isinstance(v, str) for v in names)):
            raise LeRobotError(f"{path}: {key}: names must be a list of element names, not "
                               f"{names!r}")
    return data


class MessageComposer:
    """The spec's topics as serialized messages from one step's arrays (the inverse of
    ``Spec.extract``): fields of one topic share a message (a JointState's positions and
    velocities), stamped messages get the step's time in their header."""

    def __init__(self, spec: Spec, registry):
        self.spec, self.registry = spec, registry
        self.store = registry.store
        self.topics: dict = {}
        for f in spec.fields:
            self.topics.setdefault(f.topic, (f.type, []))[1].append(f)
        for msgtype, _ in self.topics.values():
            registry.ensure(msgtype)
        self.joints = {}
        for topic, (msgtype, fields) in self.topics.items():
            if msgtype == "sensor_msgs/msg/JointState":
                names = []
                for f in fields:
                    names += [j for j in f.joints if j not in names]
                self.joints[topic] = names

    def types(self) -> dict:
        return {topic: msgtype for topic, (msgtype, _) in self.topics.items()}

    def messages(self, values: dict, stamp_ns: int) -> list:
        """[(topic, cdr bytes)] for one step: ``values`` {spec key: array}."""
        T = self.store.types
        stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                  nanosec=stamp_ns % 1_000_000_000)
        out = []
        for topic, (msgtype, fields) in self.topics.items():
            header = T["std_msgs/msg/Header"](stamp=stamp, frame_id="")
            if msgtype == "sensor_msgs/msg/JointState":
                names = self.joints[topic]
                arrays = {"position": np.zeros(0), "velocity": np.zeros(0),
                          "effort": np.zeros(0)}
                for f in fields:
                    full = arrays[f.field] if arrays[f.field].size else np.zeros(len(names))
                    full[[names.index(j) for j in f.joints]] = values[f.key]
                    arrays[f.field] = full
                msg = T[msgtype](header=header, name=list(names), **{
                    k: np.ascontiguousarray(v, np.float64) for k, v in arrays.items()})
            elif msgtype in ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/Pose"):
                v = np.asarray(values[fields[0].key], np.float64)
                pose = T["geometry_msgs/msg/Pose"](
                    position=T["geometry_msgs/msg/Point"](x=v[0], y=v[1], z=v[2]),
                    orientation=T["geometry_msgs/msg/Quaternion"](x=v[4], y=v[5], z=v[6],
                                                                  w=v[3]))
                msg = pose if msgtype.endswith("/Pose") else T[msgtype](header=header, pose=pose)
            elif msgtype.endswith("MultiArray"):
                dtype = np.float32 if "Float32" in msgtype else np.float64
                msg = T[msgtype](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[],
                                                                           data_offset=0),
                                 data=np.ascontiguousarray(values[fields[0].key], dtype))
            elif msgtype == "sensor_msgs/msg/Image":
                f = fields[0]
                img = np.ascontiguousarray(values[f.key], dtype=np.uint8)
                if img.ndim == 2:
                    img = img[..., None]
                h, w, c = img.shape
                encoding = "mono8" if c == 1 else "rgb8"
                msg = T[msgtype](header=header, height=h, width=w, encoding=encoding,
                                 is_bigendian=0, step=w * c, data=img.reshape(-1))
            else:  # Spec accepts no other type
                raise LeRobotError(f"{topic}: cannot write {msgtype}")
            out.append((topic, self.store.serialize_cdr(msg, msgtype)))
        return out


def import_lerobot(source, spec: Spec | str, out, mapping: dict | str | Path | None = None,
                   overwrite: bool = False, progress=None, warn=None) -> ImportReport:
    """Write each episode of the LeRobotDataset v3.0 at ``source`` as a rosbag2 episode of a
    new dataset folder ``out`` (dataset.yaml with ``spec``, index.json, one MCAP bag per
    episode): the spec's topics at the dataset's fps, observations stamped at the frame's time
    and the commands logged at that time, so the dataset builder gives back the frame arrays.

    Episodes with the suite's metadata (an export of this module) keep their success, seed,
    operator and notes; every episode keeps info.json's robot_type. An episode keeps one task
    (its first): ``warn`` (default: a line on stderr) says which others were not carried over.
    Written under a temporary name and moved into place at the end."""
    t0 = time.perf_counter()
    warn = warn or (lambda line: print(line, file=sys.stderr))
    try:
        spec = spec if isinstance(spec, Spec) else Spec.load(spec)
    except SpecError as exc:
        raise LeRobotError(str(exc)) from None
    out = _output_folder(source, out, overwrite)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise LeRobotError(f"{out} exists and is not empty (choose another --out, or "
                           "--overwrite)")
    data = open_lerobot(source)
    if not data.episodes:  # as export refuses an empty dataset
        raise LeRobotError(f"{data.root}: no episode to import")
    if isinstance(mapping, (str, Path)):
        mapping = read_mapping(mapping)
    resolved = resolve_mapping(spec, data, mapping)
    fps = float(data.fps)
    if abs(fps - spec.control_rate) > 1e-9:
        raise LeRobotError(f"{data.root}: recorded at {fps:g} fps, spec {spec.name} runs at "
                           f"{spec.control_rate:g} Hz: use a spec with control_rate {fps:g}")
    for key, (feature, _) in resolved.items():
        f = next(x for x in spec.fields if x.key == key)
        if f.is_image:
            shape = _camera_hw(feature, data.features[feature])
            if shape != f.shape[:2]:
                raise LeRobotError(f"{key}: {feature} is {shape[1]}x{shape[0]}, the spec's "
                                   f"{key} {f.shape[1]}x{f.shape[0]}: the builder would resize "
                                   "it (use a spec of the video's size)")
    robot_type = data.info.get("robot_type")
    robot_type = str(robot_type) if robot_type not in (None, "") else None
    dropped_tasks: list = []
    extra = {}
    for ep in data.episodes:
        extra[ep["episode_index"]] = {k[len(EXTRA):]: v for k, v in ep.items()
                                      if k.startswith(EXTRA)}

    def items():
        needed = {feature for feature, _ in resolved.values()}
        for i, ep in enumerate(data.episodes):
            columns = data.frames(i, needed)
            n = int(ep["length"])
            values = {}
            for key, (feature, idx) in resolved.items():
                arr = columns[feature]
                if idx is not None:
                    arr = np.ascontiguousarray(np.asarray(arr, np.float64).reshape(n, -1)[:, idx])
                    if not np.all(np.isfinite(arr)):
                        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
                        raise LeRobotError(f"{data.root}: episode {ep['episode_index']}, frame "
                                           f"{bad}: {feature} holds a non-finite value for "
                                           f"{key}")
                values[key] = arr
            meta = extra.get(ep["episode_index"], {})
            tasks = _episode_tasks(data, ep, columns)
            if len(tasks) > 1:
                dropped_tasks.append(f"episode {ep['episode_index']} has {len(tasks)} tasks: "
                                     f"kept {tasks[0]!r}, not {', '.join(map(repr, tasks[1:]))}")
            # an episode exported with --include-interrupted keeps its status: imported as
            # "ok" it would be trained on by default, where its source dataset skips it;
            # operator and notes as given (an empty one too), defaults where there are none
            operator, notes = meta.get("operator"), meta.get("notes")
            entry = {"status": str(meta.get("status") or "ok"),
                     "task": str(tasks[0]) if tasks else "",
                     "success": meta.get("success"), "seed": meta.get("seed"),
                     "operator": "lerobot import" if operator is None else str(operator),
                     "notes": f"{data.root.name} episode {ep['episode_index']}"
                     if notes is None else str(notes),
                     "lerobot_episode": int(ep["episode_index"])}
            if robot_type is not None:
                entry["robot_type"] = robot_type
            executed = meta.get("executed")
            if executed and len(executed) == n:  # a DAgger episode exported at full rate
                entry["executed"] = list(executed)
            yield values, n, entry

    try:
        frames = write_episode_bags(out, spec, items(), fps, overwrite=True, progress=progress,
                                    total=len(data.episodes))
    except KeyError as exc:  # a column every LeRobot v3.0 dataset has (data or episodes)
        raise LeRobotError(f"{data.root}: no column {exc} in its data or episode metadata "
                           "(a LeRobot v3.0 dataset has it)") from None
    report = ImportReport(out=out, episodes=len(data.episodes), frames=frames,
                          seconds=time.perf_counter() - t0)
    report.mapping = {k: feature if idx is None else
                      f"{feature}[{_ranges(idx)}]" for k, (feature, idx) in resolved.items()}
    report.not_carried = dropped_tasks
    used = {feature for feature, _ in resolved.values()}
    report.skipped = [k for k in data.features if k not in used and k not in _DEFAULT
                      and k != "next.done"]
    report.spec_name = spec.name
    if dropped_tasks:
        warn("not carried over (one task per episode is kept): "
             + "; ".join(dropped_tasks[:5]) + (f"; and {len(dropped_tasks) - 5} more"
                                               if len(dropped_tasks) > 5 else ""))
    return report


def write_episode_bags(out, spec: Spec, items, fps: float, overwrite: bool = False,
                       progress=None, total: int | None = None) -> int:
    """A dataset folder of the suite (dataset.yaml, index.json, one MCAP bag per episode) from
    step arrays: ``items`` yields ({spec key: (T, ...) array}, T, index entry fields). Step k
    is written at 1 s + k / fps: each stamped observation with that header stamp, every message
    logged at that time (as a lockstep recording), so the builder's alignment returns the
    arrays. An ``executed`` entry field (T strings: the source that drove each step) is written
    as the command mux's source topic, as a DAgger run records it. Written under a temporary
    name and moved into place at the end; the frames written."""
    from ..recording.bagwriter import BagWriteError, EpisodeBag, TypeRegistry
    from ..recording.recorder import DatasetWriter, RecorderError, episode_custom_data

    out = _output_folder(None, out, overwrite)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise LeRobotError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    registry = TypeRegistry()
    composer = MessageComposer(spec, registry)
    registry.ensure(SOURCE_TYPE)
    source_class = registry.store.types[SOURCE_TYPE]
    period = round(1e9 / fps)
    frames = 0
    try:
        writer = DatasetWriter(tmp, spec)
        for number, (values, n, fields) in enumerate(items):
            name = writer.next_name()
            fields = dict(fields)
            executed = fields.pop("executed", None)
            if executed is not None and len(executed) != n:
                raise LeRobotError(f"{name}: {len(executed)} executed sources for {n} steps")
            entry = {"name": name, "path": name, **fields, "duration": n / fps}
            topics = composer.types()
            if executed is not None:
                topics[SOURCE_TOPIC] = SOURCE_TYPE
            bag = EpisodeBag(tmp / name, topics, registry)
            for k in range(n):
                stamp = 1_000_000_000 + k * period
                for topic, cdr in composer.messages({key: v[k] for key, v in values.items()},
                                                    stamp):
                    bag.write(topic, stamp, cdr)
                if executed is not None:
                    bag.write(SOURCE_TOPIC, stamp, registry.store.serialize_cdr(
                        source_class(data=str(executed[k])), SOURCE_TYPE))
            bag.close(episode_custom_data(entry))
            entry["counts"] = dict(bag.counts)
            writer.upsert(entry)
            frames += n
            if progress:
                progress(number + 1, total or number + 1, name)
    except (BagWriteError, RecorderError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LeRobotError(f"writing {out}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, out)
    return frames


def _episode_tasks(data: LeRobotDataset, ep: dict, columns: dict) -> list:
    """An episode's task strings: its ``tasks`` in meta/episodes, else those of its frames'
    task_index; every task_index must be one of meta/tasks.parquet (``LeRobotError``)."""
    index = columns.get("task_index")
    order = []
    if index is not None:
        for v in np.asarray(index).reshape(-1).tolist():
            if v not in order:
                order.append(v)
        unknown = [v for v in order if v not in data.tasks]
        if unknown:
            raise LeRobotError(f"{data.root}: episode {ep['episode_index']}: task_index "
                               f"{unknown[0]} is not in meta/tasks.parquet (its indices: "
                               f"{sorted(data.tasks)})")
    tasks = ep.get("tasks")
    if tasks is None:
        tasks = [data.tasks[v] for v in order]
    return [str(t) for t in tasks]


def _ranges(idx: list) -> str:
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{idx[0]}:{idx[0] + len(idx)}"
    return ",".join(str(i) for i in idx)
