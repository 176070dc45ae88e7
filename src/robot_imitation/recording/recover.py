"""Salvage the episode a crashed recorder left behind.

A recorder killed with SIGKILL leaves its episode folder with an MCAP file that has no summary
and no ``metadata.yaml``, so seeking readers refuse it. Its closed chunks are intact: this reads
the file as a stream up to the first incomplete record and writes what it holds as a new,
valid bag. The original folder is kept as ``<name>.incomplete`` (nothing is deleted).
"""
from __future__ import annotations

import json
from pathlib import Path

from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader

from .bagwriter import EpisodeBag, TypeRegistry
from .recorder import DatasetWriter


class RecoverError(RuntimeError):
    pass


def needs_recovery(bag_dir: Path) -> bool:
    bag_dir = Path(bag_dir)
    return bag_dir.is_dir() and not (bag_dir / "metadata.yaml").is_file() and any(
        bag_dir.glob("*.mcap"))


def _read_stream(path: Path):
    """(schemas, channels, messages) readable from the start of ``path``; stops at damage."""
    schemas, channels, messages = {}, {}, []
    complete = True
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, skip_magic=False).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Message):
                    messages.append((record.channel_id, record.log_time, record.data))
        except Exception:  # noqa: BLE001 - any decoding error marks the end of the usable part
            complete = False
    return schemas, channels, messages, complete


def recover_bag(bag_dir, registry: TypeRegistry | None = None) -> dict:
    """Rewrite the readable part of an interrupted MCAP episode as a valid bag."""
    bag_dir = Path(bag_dir)
    if not needs_recovery(bag_dir):
        raise RecoverError(f"{bag_dir} is not an interrupted MCAP bag (it has metadata.yaml, "
                           "or no .mcap file)")
    registry = registry or TypeRegistry()
    files = sorted(bag_dir.glob("*.mcap"))
    schemas, channels, messages = {}, {}, []
    for path in files:
        s, c, m, _ = _read_stream(path)
        schemas.update(s)
        channels.update(c)
        messages.extend(m)
    if not channels:
        raise RecoverError(f"{bag_dir}: no complete chunk to recover (the recorder was killed "
                           "before the first chunk reached the disk)")
    topics = {}
    for ch in channels.values():
        schema = schemas.get(ch.schema_id)
        if schema is None:
            continue
        if ch.message_encoding != "cdr":
            raise RecoverError(f"{bag_dir}: topic {ch.topic} is {ch.message_encoding}, not cdr")
        topics[ch.topic] = schema.name
    messages.sort(key=lambda m: m[1])
    tmp = bag_dir.with_name(f".{bag_dir.name}.recovering")
    if tmp.exists():
        raise RecoverError(f"{tmp} exists (an earlier recovery was interrupted): remove it")
    bag = EpisodeBag(tmp, topics, registry, storage="mcap")
    for channel_id, log_time, data in messages:
        ch = channels.get(channel_id)
        if ch is not None and ch.topic in topics:
            bag.write(ch.topic, log_time, data)
    bag.close({"robot_imitation.recovered": "true"})
    kept = bag_dir.with_name(f"{bag_dir.name}.incomplete")
    bag_dir.rename(kept)
    tmp.rename(bag_dir)
    # The writer named its file after the temporary folder: give it the episode's name.
    (bag_dir / f"{tmp.name}.mcap").rename(bag_dir / f"{bag_dir.name}.mcap")
    meta = bag_dir / "metadata.yaml"
    meta.write_text(meta.read_text().replace(f"{tmp.name}.mcap", f"{bag_dir.name}.mcap"))
    return {"name": bag_dir.name, "messages": len(messages), "counts": dict(bag.counts),
            "original": kept.name}


def recover_dataset(root) -> list[dict]:
    """Recover every interrupted episode of a dataset folder (or one bag folder)."""
    root = Path(root)
    if needs_recovery(root):
        return [recover_bag(root)]
    if not root.is_dir():
        raise RecoverError(f"{root} is not a folder")
    index = root / "index.json"
    dataset = DatasetWriter(root) if index.is_file() else None
    results = []
    registry = TypeRegistry()
    for bag_dir in sorted(p for p in root.iterdir() if needs_recovery(p)):
        result = recover_bag(bag_dir, registry)
        results.append(result)
        if dataset is not None:
            dataset.upsert({"name": bag_dir.name, "path": bag_dir.name, "status": "recovered",
                            "counts": result["counts"], "original": result["original"]})
    return results


def main_summary(results: list[dict]) -> str:
    if not results:
        return "nothing to recover"
    return "\n".join(f"{r['name']}: recovered {r['messages']} messages "
                     f"{json.dumps(r['counts'])} (original kept as {r['original']})"
                     for r in results)
