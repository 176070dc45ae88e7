"""Salvage the episode a crashed recorder left behind.

A recorder killed with SIGKILL leaves its episode folder without ``metadata.yaml``:
- MCAP: a file with no summary, so seeking readers refuse it. Its closed chunks (closed at
  least every second) are intact: this reads the file as a stream up to the first incomplete
  record.
- sqlite3: a database whose last transaction never committed (commits happen at least every
  second); opening it rolls that one back, leaving every committed message.
What survives is written as a new, valid bag of the same storage, with the episode's metadata
from the dataset index in its ``custom_data``. The original folder is kept as
``<name>.incomplete`` (nothing is deleted).

Only an episode folder is ever a bag: a dataset folder (``index.json``, ``dataset.yaml``, or
episode folders inside) is never renamed or rewritten, whatever files lie at its top level
(stray storage files there are reported and left alone). ``recover_dataset`` salvages every
episode it can; one it cannot (a 0-byte MCAP from a kill before the first chunk, an empty or
damaged .db3) is marked ``unrecoverable`` in the index with the reason, left as it is, and
reported, and the episodes after it are still salvaged.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader

from ..data.bags import STORAGE_SUFFIXES
from ..data.dataset import Progress
from .bagwriter import EpisodeBag, TypeRegistry
from .recorder import DatasetWriter, RecorderError, episode_custom_data


class RecoverError(RuntimeError):
    pass


@dataclass
class Recovery:
    """What ``recover_dataset`` did: episodes recovered (``recover_bag``'s results), episodes
    that could not be salvaged ({"name", "error"}), stray storage files left alone."""

    recovered: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    stray: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


STORAGE_SUFFIX = {storage: suffix for suffix, storage in STORAGE_SUFFIXES.items()}


def _storage(bag_dir: Path) -> str | None:
    for storage, suffix in STORAGE_SUFFIX.items():
        if any(bag_dir.glob(f"*{suffix}")):
            return storage
    return None


def is_dataset(folder: Path) -> bool:
    """Whether ``folder`` is a dataset (index.json, dataset.yaml, or episode folders inside)
    rather than one episode's bag: a dataset is never recovered as a bag."""
    folder = Path(folder)
    if (folder / "index.json").is_file() or (folder / "dataset.yaml").is_file():
        return True
    return any(p.is_dir() and ((p / "metadata.yaml").is_file() or _storage(p) is not None)
               for p in folder.iterdir())


def needs_recovery(bag_dir: Path) -> bool:
    """An episode folder left without metadata.yaml, holding storage files. Never a dataset,
    the original of a recovered episode (``*.incomplete``) or a hidden (temporary) folder."""
    bag_dir = Path(bag_dir)
    return (bag_dir.is_dir() and not bag_dir.name.startswith(".")
            and not bag_dir.name.endswith(".incomplete")
            and not (bag_dir / "metadata.yaml").is_file()
            and _storage(bag_dir) is not None and not is_dataset(bag_dir))


def _read_db3(path: Path):
    """({topic: type}, messages) of the committed part of an interrupted sqlite3 bag."""
    try:
        # A normal (writable) open: sqlite rolls back the hot journal of the killed writer.
        conn = sqlite3.connect(str(path))
        try:
            topics = {row[0]: (row[1], row[2], row[3]) for row in conn.execute(
                "SELECT id, name, type, serialization_format FROM topics")}
            rows = conn.execute("SELECT topic_id, timestamp, data FROM messages "
                                "ORDER BY timestamp, id").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RecoverError(f"{path}: not a readable sqlite3 bag ({exc}); nothing was committed "
                           "before the recorder stopped, or the file is damaged") from None
    for name, _, fmt in topics.values():
        if fmt != "cdr":
            raise RecoverError(f"{path}: topic {name} is {fmt}, not cdr")
    by_name = {name: mtype for name, mtype, _ in topics.values()}
    messages = [(topics[tid][0], ts, data) for tid, ts, data in rows if tid in topics]
    return by_name, messages


def _read_mcaps(bag_dir: Path, files: list):
    schemas, channels, raw = {}, {}, []
    for path in files:
        s, c, m, _ = _read_stream(path)
        schemas.update(s)
        channels.update(c)
        raw.extend(m)
    topics = {}
    for ch in channels.values():
        schema = schemas.get(ch.schema_id)
        if schema is None:
            continue
        if ch.message_encoding != "cdr":
            raise RecoverError(f"{bag_dir}: topic {ch.topic} is {ch.message_encoding}, not cdr")
        topics[ch.topic] = schema.name
    messages = [(channels[cid].topic, t, data) for cid, t, data in raw
                if cid in channels and channels[cid].topic in topics]
    messages.sort(key=lambda m: m[1])
    return topics, messages


def _read_stream(path: Path):
    """(schemas, channels, messages) readable from the start of ``path``; stops at damage (a
    chunk whose CRC does not match included)."""
    schemas, channels, messages = {}, {}, []
    complete = True
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, skip_magic=False, validate_crcs=True).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Message):
                    messages.append((record.channel_id, record.log_time, record.data))
        except Exception:  # noqa: BLE001 - any decoding error marks the end of the usable part
            complete = False
    return schemas, channels, messages, complete


def recover_bag(bag_dir, registry: TypeRegistry | None = None,
                custom_data: dict | None = None) -> dict:
    """Rewrite the readable part of an interrupted episode (MCAP or sqlite3) as a valid bag."""
    bag_dir = Path(bag_dir)
    if bag_dir.is_dir() and is_dataset(bag_dir):
        raise RecoverError(f"{bag_dir} is a dataset folder, not an episode's bag: recover the "
                           "dataset (its episodes are recovered one by one)")
    if not needs_recovery(bag_dir):
        raise RecoverError(f"{bag_dir} is not an interrupted bag (it has metadata.yaml, or no "
                           ".mcap or .db3 file, or it is the original of a recovered episode)")
    registry = registry or TypeRegistry()
    storage = _storage(bag_dir)
    suffix = STORAGE_SUFFIX[storage]
    files = sorted(bag_dir.glob(f"*{suffix}"))
    if storage == "mcap":
        topics, messages = _read_mcaps(bag_dir, files)
    else:
        topics, messages = {}, []
        for path in files:
            t, m = _read_db3(path)
            topics.update(t)
            messages.extend(m)
    if not topics:
        raise RecoverError(f"{bag_dir}: nothing to recover (the recorder was killed before the "
                           "first chunk or commit reached the disk)")
    tmp = bag_dir.with_name(f".{bag_dir.name}.recovering")
    if tmp.exists():
        raise RecoverError(f"{tmp} exists (an earlier recovery was interrupted): remove it")
    bag = EpisodeBag(tmp, topics, registry, storage=storage)
    for topic, log_time, data in messages:
        bag.write(topic, log_time, data)
    bag.close({**(custom_data or {}), "robot_imitation.recovered": "true"})
    kept = bag_dir.with_name(f"{bag_dir.name}.incomplete")
    bag_dir.rename(kept)
    tmp.rename(bag_dir)
    # The writer named its file after the temporary folder: give it the episode's name.
    (bag_dir / f"{tmp.name}{suffix}").rename(bag_dir / f"{bag_dir.name}{suffix}")
    meta = bag_dir / "metadata.yaml"
    meta.write_text(meta.read_text().replace(f"{tmp.name}{suffix}", f"{bag_dir.name}{suffix}"))
    return {"name": bag_dir.name, "messages": len(messages), "counts": dict(bag.counts),
            "original": kept.name, "storage": storage}


def recover_dataset(root) -> Recovery:
    """Recover every interrupted episode of a dataset folder (or one episode's bag folder).

    Never stops at an episode it cannot salvage: that one is marked ``unrecoverable`` in the
    index (with the reason) and listed in ``failed``, and the others are still recovered."""
    root = Path(root)
    if not root.is_dir():
        raise RecoverError(f"{root} is not a folder")
    report = Recovery()
    if needs_recovery(root):  # one episode's folder
        dataset_root, pending = root.parent, [root]
    else:
        dataset_root = root
        pending = sorted(p for p in root.iterdir() if needs_recovery(p))
        report.stray = sorted(p.name for p in root.iterdir()
                              if p.is_file() and p.suffix in STORAGE_SUFFIXES)
    index = dataset_root / "index.json"
    try:
        dataset = DatasetWriter(dataset_root) if index.is_file() else None
    except RecorderError as exc:
        raise RecoverError(str(exc)) from None
    registry = TypeRegistry()
    progress = Progress(len(pending), "recovering")
    for done, bag_dir in enumerate(pending, 1):
        progress.update(done, bag_dir.name)
        known = next((e for e in dataset.episodes if e["name"] == bag_dir.name), {}) \
            if dataset is not None else {}
        try:
            result = recover_bag(bag_dir, registry, episode_custom_data(known))
        except (RecoverError, OSError) as exc:
            error = str(exc)
            report.failed.append({"name": bag_dir.name, "error": error})
            if dataset is not None:
                dataset.upsert({"name": bag_dir.name, "path": bag_dir.name,
                                "status": "unrecoverable", "error": error})
            continue
        report.recovered.append(result)
        if dataset is not None:
            dataset.upsert({"name": bag_dir.name, "path": bag_dir.name, "status": "recovered",
                            "counts": result["counts"], "original": result["original"]})
    progress.close()
    return report


def main_summary(report: Recovery) -> tuple[str, str]:
    """(what was recovered, for stdout; what could not be and what was left alone, for
    stderr)."""
    out = [f"{r['name']}: recovered {r['messages']} messages {json.dumps(r['counts'])} "
           f"(original kept as {r['original']})" for r in report.recovered]
    err = [f"{f['name']}: cannot be salvaged: {f['error']} (marked unrecoverable, left as it "
           "is)" for f in report.failed]
    err += [f"{name}: a storage file at the dataset's top level is no episode: left alone"
            for name in report.stray]
    if report.failed:
        err.append(f"{len(report.failed)} episode{'s' if len(report.failed) > 1 else ''} could "
                   f"not be salvaged{'; the others were' if report.recovered else ''}")
    if not out and not report.failed:
        out.append("nothing to recover")
    return "\n".join(out), "\n".join(err)
