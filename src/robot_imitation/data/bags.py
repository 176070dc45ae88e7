"""Reading rosbag2 bags, with errors that say which bag, file and topic went wrong.

A thin layer over ``rosbags.highlevel.AnyReader``. It reads MCAP and sqlite3 storage, bags split
into several files, every metadata.yaml version, and either a bag directory or one storage file
(``.mcap``, ``.db3``)::

    with open_bag("episode_000000") as bag:
        bag.topics        # {"/joint_states": TopicInfo("sensor_msgs/msg/JointState", 120), ...}
        for topic, log_time_ns, msg in bag.messages(["/joint_states"]):
            ...

Choices that differ from using ``AnyReader`` on the bag directory:

- The storage files are opened one by one (``rosbags.rosbag2.Reader``) and merged in log-time
  order. ``AnyReader`` on a directory matches each file's topics to metadata.yaml by their QoS
  profiles too, and yields nothing at all for bags whose two copies of the profiles differ
  (rosbag2's own ``talker`` test bags). metadata.yaml is still read: for ``custom_data``, the
  file list, and the serialization format of each topic (the storage files do not always say).
  Only compressed bags (``compression_mode`` file or message) are read through the directory,
  which decompresses.
- Messages are decoded with the ROS 2 Kilted types first; definitions stored in the bag only
  supply the types Kilted lacks. Stored definitions can be incomplete (rosbag2's sqlite3 test
  bag stores ``rcl_interfaces/msg/Log`` as the single field ``uint8 level``), the standard types
  cannot.
- A stored definition that cannot be used never makes the whole bag unreadable (``AnyReader``
  refuses to open it): its topics are listed in ``undecodable`` with the reason, and only
  reading their messages fails. Service event topics (``pkg/srv/Name_Event``), for which
  rosbag2 stores the ``.srv`` text (request ``---`` response) rather than the event's
  definition, are decoded with the event type built from it (``info``, ``request[<=1]``,
  ``response[<=1]``). Where a topic carries a type hash (metadata version 7 and later) and the
  definition used to decode it hashes differently, the topic is undecodable too: decoding with
  another layout would return wrong values. (Service event hashes are the service's, which
  this reader cannot compute: they are not checked.)

Integrity: a read that ends with fewer messages than the storage's index announces raises
``BagError``: a damaged file never passes for a short recording. MCAP chunks that carry a CRC
(the recorder's, rosbag2's own writer's) are checked when read, and a mismatch is an error
naming the bag, the file and the chunk. Chunks with CRC 0 (written by ``rosbags``, including
this recorder before it wrote CRCs) and sqlite3 bags (no checksums at all) cannot be checked: a
byte changed inside a payload there is read as it is. ``checked_chunks`` tells which is which.
"""
from __future__ import annotations

import heapq
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from functools import cache
from pathlib import Path, PurePath
from typing import NamedTuple

import yaml
from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

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
        # libyaml's parser when PyYAML has it: the pure-Python one costs ~30 ms a bag
        data = yaml.load((path / "metadata.yaml").read_text(encoding="utf-8"),
                         Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f"{path}: cannot read metadata.yaml: {exc}") from None
    info = data.get("rosbag2_bagfile_information") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise BagError(f"{path}: metadata.yaml has no rosbag2_bagfile_information mapping")
    # the fields read here, of the types rosbag2 writes (a wrong one was a traceback)
    for key, kind, item in (("relative_file_paths", list, str), ("custom_data", dict, None),
                            ("compression_mode", str, None),
                            ("topics_with_message_count", list, dict)):
        value = info.get(key)
        if value is not None and (not isinstance(value, kind) or item is not None and not all(
                isinstance(v, item) for v in value)):
            what = f"a list of {'strings' if item is str else 'mappings'}" if item else \
                {dict: "a mapping", str: "a string"}[kind]
            raise BagError(f"{path}: metadata.yaml: {key} must be {what}, got {value!r:.60}")
    for entry in info.get("topics_with_message_count") or []:
        if not isinstance(entry.get("topic_metadata") or {}, dict):
            raise BagError(f"{path}: metadata.yaml: topic_metadata must be a mapping, got "
                           f"{entry.get('topic_metadata')!r:.60}")
    return info


DEFINITION_SEPARATOR = "=" * 80 + "\n"


def _service_event_types(msgtype: str, text: str) -> dict:
    """The types of the service event ``pkg/srv/Name_Event`` from the ``.srv`` text rosbag2
    stores for it (request, ``---``, response, then the definitions they use): Name_Request,
    Name_Response and Name_Event as rosidl generates them."""
    base = msgtype[: -len("_Event")]
    main, _, deps = text.partition(DEFINITION_SEPARATOR)
    deps = DEFINITION_SEPARATOR + deps if deps else ""
    lines = main.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.strip() == "---")
    request, response = "\n".join(lines[:cut]) + "\n", "\n".join(lines[cut + 1:]) + "\n"
    types = {}
    types.update(get_types_from_msg(request + deps, f"{base}_Request"))
    types.update(get_types_from_msg(response + deps, f"{base}_Response"))
    types.update(get_types_from_msg(
        f"service_msgs/msg/ServiceEventInfo info\n{base}_Request[<=1] request\n"
        f"{base}_Response[<=1] response\n", msgtype))
    # rosbags files every type under pkg/msg/: give the service's types their /srv/ names back.
    srv = base.rsplit("/", 1)[0]

    def rename(value):
        if isinstance(value, str):
            return value.replace(f"{srv}/msg/", f"{srv}/")
        if isinstance(value, (tuple, list)):
            return type(value)(rename(v) for v in value)
        return value

    return {rename(name): rename(fields) for name, fields in types.items()}


def _is_service_text(msgtype: str, text: str) -> bool:
    main = text.partition(DEFINITION_SEPARATOR)[0]
    return ("/srv/" in msgtype and msgtype.endswith("_Event")
            and any(line.strip() == "---" for line in main.splitlines()))


def _types_of_definition(msgtype: str, msgdef) -> dict:
    """The rosbags types of a stored definition (``MessageDefinition``) of ``msgtype``."""
    if msgdef.format == MessageDefinitionFormat.MSG:
        if _is_service_text(msgtype, msgdef.data):
            return _service_event_types(msgtype, msgdef.data)
        return get_types_from_msg(msgdef.data, msgtype)
    types = {}
    if msgdef.data.startswith(f"{DEFINITION_SEPARATOR}IDL: "):
        for part in msgdef.data.split(DEFINITION_SEPARATOR)[1:]:
            types.update(get_types_from_idl(part.split("\n", 1)[1]))
    else:
        types.update(get_types_from_idl(msgdef.data))
    return types


def _sqlite_definitions(path: Path) -> dict:
    """{type name: MessageDefinition} from a sqlite3 bag's ``message_definitions`` table (the
    rosbags reader only looks up each topic's own type there; rosbag2 stores a service event
    topic's definition under the service's name)."""
    from rosbags.interfaces import MessageDefinition

    formats = {"ros2msg": MessageDefinitionFormat.MSG, "ros2idl": MessageDefinitionFormat.IDL}
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT topic_type, encoding, encoded_message_definition "
                                "FROM message_definitions").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return {name: MessageDefinition(formats[enc], text) for name, enc, text in rows
            if enc in formats and text}


class BagReader:
    """An open bag. Use ``open_bag``; close it (or use it as a context manager) when done."""

    def __init__(self, path):
        self.path = Path(path)
        self._is_open = False
        self._stack = ExitStack()
        self._readers: list = []
        self.metadata, self.files = _locate(self.path)
        self.custom_data = dict(self.metadata.get("custom_data") or {})
        self.storage = (self.metadata.get("storage_identifier")
                        or STORAGE_SUFFIXES.get(self.files[0].suffix))
        if self.storage not in STORAGE_SUFFIXES.values():
            raise BagError(f"{self.path}: storage {self.storage!r} is not supported "
                           f"(supported: {sorted(STORAGE_SUFFIXES.values())})")
        compressed = (self.metadata.get("compression_mode") or "").lower() not in ("", "none")
        self._sources = [self.path] if compressed else self.files
        self._compressed = compressed
        for source in self._sources:
            try:
                reader = Reader(source)
                reader.open()
            except Exception as exc:  # noqa: BLE001 - the storage readers raise many kinds
                self._stack.close()
                raise BagError(f"{source}: cannot read the bag ({exc}); the file is truncated "
                               "or corrupt") from None
            self._stack.callback(reader.close)
            self._readers.append(reader)
        self._is_open = True
        self.connections = [c for r in self._readers for c in r.connections]
        try:
            self._check_contents()
        except BagError:
            self.close()
            raise
        self.typestore, self.undecodable = self._types()

    def _types(self):
        """(the typestore decoding this bag's messages, {topic: why it cannot be decoded})."""
        kilted = _kilted()
        stored: dict = {}
        for c in self.connections:
            if c.msgdef.format != MessageDefinitionFormat.NONE:
                stored.setdefault(c.msgtype, c.msgdef)
        missing = {c.msgtype for c in self.connections
                   if c.msgtype not in kilted.fielddefs and c.msgtype not in stored}
        if missing and self.storage == "sqlite3" and not self._compressed:
            tables = {}
            for f in self.files:
                tables.update(_sqlite_definitions(f))
            for msgtype in missing:
                for name in (msgtype, msgtype.removesuffix("_Event")):
                    if name in tables:
                        stored[msgtype] = tables[name]
                        break
        problems: dict = {}  # msgtype -> reason
        extra: dict = {}
        for msgtype in sorted({c.msgtype for c in self.connections}):
            if msgtype in kilted.fielddefs:
                continue
            if msgtype not in stored:
                problems[msgtype] = (f"message type {msgtype} is unknown: it is no ROS 2 Kilted "
                                     "type and the bag stores no definition of it")
                continue
            try:
                types = _types_of_definition(msgtype, stored[msgtype])
            except Exception as exc:  # noqa: BLE001 - the definition parsers raise many kinds
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                problems[msgtype] = (f"the definition of {msgtype} stored in the bag cannot be "
                                     f"parsed ({type(exc).__name__}: {first[:200]})")
                continue
            if msgtype not in types:
                problems[msgtype] = (f"the definition stored in the bag for {msgtype} defines "
                                     f"{sorted(types)[:3]}, not {msgtype}")
                continue
            extra.update({name: fields for name, fields in types.items()
                          if name not in kilted.fielddefs})
        store = kilted
        if extra:
            store = get_typestore(Stores.ROS2_KILTED)
            try:
                store.register(extra)
            except Exception as exc:  # noqa: BLE001 - conflicting stored definitions
                for msgtype in {c.msgtype for c in self.connections} - set(kilted.fielddefs):
                    problems.setdefault(msgtype, f"the definitions stored in the bag conflict "
                                                 f"({type(exc).__name__}: {exc})")
                store = kilted
        # The type hashes: the storage's, else metadata.yaml's (rosbags reads none from MCAP).
        recorded = {(e.get("topic_metadata") or {}).get("name"):
                    (e.get("topic_metadata") or {}).get("type_description_hash")
                    for e in self.metadata.get("topics_with_message_count") or []}
        undecodable, hashes = {}, {}
        for c in self.connections:
            digest = c.digest or recorded.get(c.topic) or ""
            if c.msgtype in problems:
                undecodable[c.topic] = problems[c.msgtype]
            elif digest and "/srv/" not in c.msgtype and c.topic not in undecodable:
                if c.msgtype not in hashes:
                    try:
                        hashes[c.msgtype] = store.hash_rihs01(c.msgtype)
                    except Exception:  # noqa: BLE001 - a type rosbags cannot hash
                        hashes[c.msgtype] = None
                have = hashes[c.msgtype]
                if have is not None and have != digest:
                    source = ("the ROS 2 Kilted definition" if c.msgtype in kilted.fielddefs
                              else "the definition stored in the bag")
                    undecodable[c.topic] = (f"{source} of {c.msgtype} hashes to {have}, the bag "
                                            f"records {digest}: its messages were written "
                                            "with another definition")
        return store, undecodable

    def _check_contents(self) -> None:
        formats = {c.topic: c.ext.serialization_format for c in self.connections}
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
        for c in self.connections:
            counts[c.topic] += c.msgcount
            types.setdefault(c.topic, c.msgtype)
        return {t: TopicInfo(types[t], counts[t]) for t in sorted(types)}

    @property
    def message_count(self) -> int:
        return sum(r.message_count for r in self._readers)

    @property
    def start_ns(self) -> int:
        """Log time of the first message (ns)."""
        return min(r.start_time for r in self._readers)

    @property
    def end_ns(self) -> int:
        """Log time of the last message (ns)."""
        return max(r.end_time for r in self._readers) - 1  # rosbags': one past the last message

    @property
    def duration(self) -> float:
        """Seconds from the first to the last message."""
        return (self.end_ns - self.start_ns) * 1e-9

    @property
    def checked_chunks(self) -> tuple[int, int] | None:
        """(chunks carrying a CRC, chunks) over the MCAP files; None for sqlite3 (no checksums)
        and file-compressed bags. Chunks with CRC 0 are read unchecked."""
        if self.storage != "mcap" or any(f.suffix != ".mcap" for f in self.files):
            return None
        if not hasattr(self, "_checked"):
            crcs = [crc for f in self.files for _, crc in _chunk_crcs(f)]
            self._checked = (sum(1 for crc in crcs if crc), len(crcs))
        return self._checked

    # ----------------------------------------------------------------- messages
    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, object]]:
        """``(topic, log_time_ns, message)`` in log-time order, of ``topics`` (default: all)."""
        available = self.topics
        wanted = list(available) if topics is None else list(topics)
        absent = [t for t in wanted if t not in available]
        if absent:
            raise BagError(f"{self.path}: no topic {', '.join(absent)} in the bag "
                           f"(it has {sorted(available)})")
        bad = {t: why for t, why in self.undecodable.items() if t in wanted}
        if bad:
            raise BagError(f"{self.path}: " + "; ".join(f"topic {t}: {why}"
                                                        for t, why in sorted(bad.items())))
        expected = {t: available[t].count for t in wanted}
        read = Counter()
        raw = heapq.merge(*[r.messages(connections=mine) for r in self._readers
                            if (mine := [c for c in r.connections if c.topic in wanted])],
                          key=lambda m: m[1])
        while True:
            try:
                connection, log_time, data = next(raw)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the storage readers raise many kinds
                raise BagError(self._damage(exc, sum(read.values()))) from exc
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

    def _damage(self, exc: Exception, read: int) -> str:
        """The error for a read that failed: the chunk whose CRC does not match when there is
        one (MCAP), else what the storage reader said."""
        if self.storage == "mcap" and not self._compressed:
            for f in self.files:
                bad = _bad_chunk(f)
                if bad is not None:
                    return f"{f}: {bad}: the file was damaged after it was written; corrupt"
        return (f"{self.path}: reading failed after {read} messages: truncated or corrupt "
                f"({type(exc).__name__}: {exc})")

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._is_open:
            self._is_open = False
            self._stack.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BagReader({str(self.path)!r}, {self.storage}, {len(self.files)} file(s))"


CHUNK_CRC_OFFSET = 1 + 8 + 3 * 8  # opcode, length, start/end time, uncompressed size


def _chunk_crcs(path: Path) -> list:
    """[(chunk start offset, CRC field)] of an MCAP file's chunks, from its summary (a read of
    4 bytes per chunk). [] when the file has no summary (then rosbags could not open it)."""
    from mcap.reader import make_reader

    out = []
    try:
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
            for index in sorted(summary.chunk_indexes if summary else [],
                                key=lambda i: i.chunk_start_offset):
                f.seek(index.chunk_start_offset + CHUNK_CRC_OFFSET)
                out.append((index.chunk_start_offset, int.from_bytes(f.read(4), "little")))
    except Exception:  # noqa: BLE001 - a damaged summary: nothing to report here
        return []
    return out


def _bad_chunk(path: Path) -> str | None:
    """"chunk i of n ..." for the first chunk of the MCAP file whose records do not match their
    CRC, else None."""
    from io import BytesIO

    from mcap.data_stream import ReadDataStream
    from mcap.reader import make_reader
    from mcap.records import Chunk
    from mcap.stream_reader import CRCValidationError, get_chunk_data_stream

    try:
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
            indexes = sorted(summary.chunk_indexes if summary else [],
                             key=lambda i: i.chunk_start_offset)
            for i, index in enumerate(indexes, 1):
                f.seek(index.chunk_start_offset + 9)
                record = Chunk.read(ReadDataStream(BytesIO(f.read(index.chunk_length - 9))))
                try:
                    get_chunk_data_stream(record, validate_crc=True)
                except CRCValidationError as err:
                    return (f"chunk {i} of {len(indexes)} (at byte {index.chunk_start_offset}, "
                            f"messages logged {index.message_start_time}.."
                            f"{index.message_end_time} ns) does not match its CRC "
                            f"(stored {err.expected:#010x}, computed {err.actual:#010x})")
    except Exception:  # noqa: BLE001 - the summary itself is damaged: say what rosbags said
        return None
    return None


def open_bag(path) -> BagReader:
    """Open the bag at ``path`` (a bag directory or a ``.mcap``/``.db3`` file).

    Raises ``BagError`` naming the bag when it is missing, not a bag, empty, not CDR, or
    truncated or corrupt.
    """
    return BagReader(path)
