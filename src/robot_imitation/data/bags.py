"""Reading rosbag2 bags, with errors that say which bag, file and topic went wrong.

A thin layer over ``rosbags.highlevel.AnyReader``. It reads MCAP and sqlite3 storage, bags split
into several files, every metadata.yaml version, and either a bag directory or one storage file
(``.mcap``, ``.db3``)::

    with open_bag("episode_000000") as bag:
        bag.topics        # {"/joint_states": TopicInfo("sensor_msgs/msg/JointState", 120), ...}
        for topic, log_time_ns, msg in bag.messages(["/joint_states"]):
            ...

Two choices differ from using ``AnyReader`` on the bag directory directly:

- The storage files are opened one by one and merged in log-time order. ``AnyReader`` on a
  directory matches each file's topics to metadata.yaml by their QoS profiles too, and yields
  nothing at all for bags whose two copies of the profiles differ (rosbag2's own ``talker`` test
  bags). metadata.yaml is still read: for ``custom_data``, the file list, and the serialization
  format of each topic (the storage files do not always say). Only compressed bags
  (``compression_mode`` file or message) are read through the directory, which decompresses.
- Messages are decoded with the ROS 2 Kilted types first; definitions stored in the bag only
  supply the types Kilted lacks. Stored definitions can be incomplete (rosbag2's sqlite3 test
  bag stores ``rcl_interfaces/msg/Log`` as the single field ``uint8 level``), the standard types
  cannot.

A read that ends with fewer messages than the storage's index announces raises ``BagError``:
a damaged file never passes for a short recording.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path, PurePath
from typing import NamedTuple

import yaml
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}


@cache
def _kilted():
    """The ROS 2 Kilted typestore, shared by all bags (it caches its generated decoders)."""
    return get_typestore(Stores.ROS2_KILTED)


class BagError(ValueError):
    """A bag that cannot be read, with the bag (and topic) it is about in the message."""


class TopicInfo(NamedTuple):
    msgtype: str
    count: int


def bag_files(path) -> list[Path]:
    """The files a bag consists of (metadata.yaml first, then its storage files), unopened.

    Cheap (reads metadata.yaml only): the dataset cache keys on these files' sizes and times.
    """
    metadata, files = _locate(Path(path))
    return [Path(path) / "metadata.yaml", *files] if metadata else files


def _locate(path: Path) -> tuple[dict, list[Path]]:
    """(metadata.yaml's mapping, {} for a storage file; the storage files) of the bag ``path``."""
    if not path.exists():
        raise BagError(f"{path}: no such bag (the path does not exist)")
    if path.is_file():
        if path.suffix not in STORAGE_SUFFIXES:
            raise BagError(f"{path}: not a rosbag2 bag: expected a bag directory (with "
                           f"metadata.yaml) or a storage file ({', '.join(STORAGE_SUFFIXES)})")
        return {}, [path]
    if not (path / "metadata.yaml").is_file():
        found = sorted(p.name for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)
        hint = (f"; it holds storage files {found}: pass one of them to read it alone"
                if found else "")
        raise BagError(f"{path}: not a rosbag2 bag: no metadata.yaml{hint}")
    metadata = _read_metadata(path)
    names = metadata.get("relative_file_paths") or []
    if not names:
        raise BagError(f"{path}: metadata.yaml lists no storage files (relative_file_paths)")
    # Versions before 4 list the files with the bag's folder in front: keep the name only.
    files = [path / PurePath(name).name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BagError(f"{path}: storage files listed in metadata.yaml are missing: {missing}")
    return metadata, files


def _read_metadata(path: Path) -> dict:
    """The ``rosbag2_bagfile_information`` mapping of the bag directory ``path``."""
    try:
        data = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f"{path}: cannot read metadata.yaml: {exc}") from None
    info = data.get("rosbag2_bagfile_information") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise BagError(f"{path}: metadata.yaml has no rosbag2_bagfile_information mapping")
    return info


def _any_reader(sources: list[Path]) -> AnyReader:
    # An empty default typestore: AnyReader then only gathers the definitions stored in the bag;
    # the Kilted types come from the shared store (see the module docstring).
    return AnyReader(sources, default_typestore=get_typestore(Stores.EMPTY))


class BagReader:
    """An open bag. Use ``open_bag``; close it (or use it as a context manager) when done."""

    def __init__(self, path):
        self.path = Path(path)
        self._is_open = False
        self.metadata, self.files = _locate(self.path)
        self.custom_data = dict(self.metadata.get("custom_data") or {})
        self.storage = (self.metadata.get("storage_identifier")
                        or STORAGE_SUFFIXES.get(self.files[0].suffix))
        if self.storage not in STORAGE_SUFFIXES.values():
            raise BagError(f"{self.path}: storage {self.storage!r} is not supported "
                           f"(supported: {sorted(STORAGE_SUFFIXES.values())})")
        compressed = (self.metadata.get("compression_mode") or "").lower() not in ("", "none")
        self._sources = [self.path] if compressed else self.files
        self._reader = _any_reader(self._sources)
        try:
            self._reader.open()
        except (AnyReaderError, OSError) as exc:
            raise BagError(f"{self._failing_source()}: cannot read the bag ({exc}); the file "
                           "is truncated or corrupt") from None
        self._is_open = True
        try:
            self._check_contents()
        except BagError:
            self.close()
            raise
        kilted = _kilted()
        extra = {name: fields for name, fields in self._reader.typestore.fielddefs.items()
                 if name not in kilted.fielddefs}
        self.typestore = kilted
        if extra:
            self.typestore = get_typestore(Stores.ROS2_KILTED)
            self.typestore.register(extra)

    def _failing_source(self) -> Path:
        """The storage file that does not open (the bag itself when that cannot be told)."""
        if len(self._sources) == 1:
            return self._sources[0]
        for source in self._sources:
            try:
                with _any_reader([source]):
                    pass
            except (AnyReaderError, OSError):
                return source
        return self.path

    def _check_contents(self) -> None:
        formats = {c.topic: c.ext.serialization_format for c in self._reader.connections}
        for entry in self.metadata.get("topics_with_message_count") or []:
            meta = entry.get("topic_metadata") or {}
            formats[meta.get("name")] = meta.get("serialization_format")
        not_cdr = {t: f for t, f in formats.items() if f != "cdr"}
        if not_cdr:
            raise BagError(f"{self.path}: serialization format is not CDR on "
                           f"{', '.join(f'{t} ({f!r})' for t, f in sorted(not_cdr.items()))}; "
                           "only ROS 2 CDR bags can be read")
        if self.message_count == 0:
            raise BagError(f"{self.path}: the bag holds no messages (topics: "
                           f"{sorted(self.topics) or 'none'})")

    # ----------------------------------------------------------------- summary
    @property
    def topics(self) -> dict[str, TopicInfo]:
        """{topic: TopicInfo(msgtype, count)}, counts summed over the storage files."""
        counts, types = Counter(), {}
        for c in self._reader.connections:
            counts[c.topic] += c.msgcount
            types.setdefault(c.topic, c.msgtype)
        return {t: TopicInfo(types[t], counts[t]) for t in sorted(types)}

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    @property
    def start_ns(self) -> int:
        """Log time of the first message (ns)."""
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        """Log time of the last message (ns)."""
        return self._reader.end_time - 1  # rosbags' end time is one past the last message

    @property
    def duration(self) -> float:
        """Seconds from the first to the last message."""
        return (self.end_ns - self.start_ns) * 1e-9

    # ----------------------------------------------------------------- messages
    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, object]]:
        """``(topic, log_time_ns, message)`` in log-time order, of ``topics`` (default: all)."""
        available = self.topics
        wanted = list(available) if topics is None else list(topics)
        absent = [t for t in wanted if t not in available]
        if absent:
            raise BagError(f"{self.path}: no topic {', '.join(absent)} in the bag "
                           f"(it has {sorted(available)})")
        connections = [c for c in self._reader.connections if c.topic in wanted]
        for c in connections:
            if c.msgtype not in self.typestore.fielddefs:
                raise BagError(f"{self.path}: topic {c.topic}: message type {c.msgtype} is "
                               "unknown: it is no ROS 2 Kilted type and the bag stores no "
                               "definition of it")
        expected = {t: available[t].count for t in wanted}
        read = Counter()
        raw = self._reader.messages(connections=connections)
        while True:
            try:
                connection, log_time, data = next(raw)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the storage readers raise many kinds
                raise BagError(f"{self.path}: reading failed after {sum(read.values())} "
                               f"messages: truncated or corrupt ({type(exc).__name__}: "
                               f"{exc})") from exc
            try:
                msg = self.typestore.deserialize_cdr(data, connection.msgtype)
            except Exception as exc:  # noqa: BLE001 - malformed data fails in many ways
                raise BagError(f"{self.path}: topic {connection.topic}: cannot decode the "
                               f"{connection.msgtype} message logged at {log_time} ns "
                               f"({type(exc).__name__}: {exc})") from exc
            read[connection.topic] += 1
            yield connection.topic, log_time, msg
        short = {t: (read[t], n) for t, n in expected.items() if read[t] != n}
        if short:
            raise BagError(f"{self.path}: truncated or corrupt: read "
                           + ", ".join(f"{got} of {n} messages on {t}"
                                       for t, (got, n) in sorted(short.items())))

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._is_open:
            self._is_open = False
            self._reader.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BagReader({str(self.path)!r}, {self.storage}, {len(self.files)} file(s))"


def open_bag(path) -> BagReader:
    """Open the bag at ``path`` (a bag directory or a ``.mcap``/``.db3`` file).

    Raises ``BagError`` naming the bag when it is missing, not a bag, empty, not CDR, or
    truncated or corrupt.
    """
    return BagReader(path)
