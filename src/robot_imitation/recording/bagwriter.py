"""Writing rosbag2 bags (MCAP or sqlite3) of serialized messages, one bag per episode.

Built on ``rosbags``' writer, which produces bags that ``ros2 bag info/play``, Foxglove and any
rosbag2 reader open (metadata.yaml version 9 with type description hashes). Message
definitions come from the ROS 2 Kilted type store, or from the ``.msg`` files of any installed
package (so any message type can be recorded).

MCAP chunks carry the CRC32 of their uncompressed records (``rosbags`` writes 0, "no CRC"):
readers that check CRCs (ours, the ``mcap`` library's) refuse a chunk damaged after it was
written, a flipped bit in a float included, instead of returning a changed value.
"""
from __future__ import annotations

import os
import sqlite3
import time
import zlib
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

CHUNK_SECONDS = 1.0  # an open MCAP chunk is closed (and reaches the disk) at least this often
# Byte offset of a chunk record's uncompressed_crc field from the record's start: opcode (1),
# record length (8), message_start_time, message_end_time, uncompressed_size (8 each).
CHUNK_CRC_OFFSET = 1 + 8 + 3 * 8


class BagWriteError(OSError):
    """The bag could not be written (disk full, unwritable folder, ...)."""


class TypeRegistry:
    """Message definitions and type hashes for the types being recorded."""

    def __init__(self):
        self.store = get_typestore(Stores.ROS2_KILTED)

    def has_header(self, msgtype: str) -> bool:
        """Whether messages of ``msgtype`` start with a std_msgs/Header."""
        self.ensure(msgtype)
        fields = self.store.fielddefs[msgtype][1]
        return bool(fields) and fields[0][1][-1] == "std_msgs/msg/Header"

    def ensure(self, msgtype: str) -> None:
        """Make ``msgtype`` (``pkg/msg/Name``) known, reading installed ``.msg`` files if needed."""
        if msgtype in self.store.fielddefs:
            return
        text = _find_msg_file(msgtype)
        types = get_types_from_msg(text, msgtype)
        self.store.register(types)
        for _, fields in types.values():
            for _, desc in fields:
                for ref in _referenced_types(desc):
                    self.ensure(ref)


def _referenced_types(desc) -> list:
    """Type names a field refers to (rosbags field descriptors are nested tuples)."""
    out = []
    if isinstance(desc, tuple):
        for item in desc:
            if isinstance(item, str) and "/msg/" in item:
                out.append(item)
            else:
                out.extend(_referenced_types(item))
    return out


def _find_msg_file(msgtype: str) -> str:
    pkg, _, name = msgtype.replace("/msg/", "/").partition("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in prefixes:
        path = Path(prefix, "share", pkg, "msg", f"{name}.msg")
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise BagWriteError(f"no message definition for {msgtype}: {pkg}/msg/{name}.msg not found "
                        f"under AMENT_PREFIX_PATH ({prefixes})")


def _write_chunk_crcs(storage) -> None:
    """Make the ``rosbags`` MCAP storage writer (pinned version, tested) write each chunk's
    CRC32 instead of 0: the CRC of the records about to be closed into a chunk, patched into the
    chunk record's header once ``close_chunk`` has written it. One ``zlib.crc32`` over the
    chunk buffer per chunk (at most 1 MiB, or a second of messages)."""
    close_chunk = storage.close_chunk

    def close_chunk_with_crc() -> None:
        with storage.chunk.bio.getbuffer() as records:
            crc = zlib.crc32(records)
        start = storage.bio.tell()
        close_chunk()
        end = storage.bio.tell()
        storage.bio.seek(start + CHUNK_CRC_OFFSET)
        storage.bio.write(crc.to_bytes(4, "little"))
        storage.bio.seek(end)

    storage.close_chunk = close_chunk_with_crc  # rosbags calls it when a chunk is full and at close


class EpisodeBag:
    """One bag being written. ``write`` must be called from a single thread."""

    def __init__(self, path: Path, topics: dict, registry: TypeRegistry, storage: str = "mcap",
                 qos: dict | None = None, compress: bool = False):
        self.path = Path(path)
        self.storage = storage
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise ValueError(f"storage must be mcap or sqlite3, not {storage!r}")
        self.counts = {t: 0 for t in topics}
        self.bytes = 0
        self._last_chunk = time.monotonic()
        try:
            self.writer = Writer(self.path, version=9, storage_plugin=plugin)
            if compress:
                self.writer.set_compression(CompressionMode.STORAGE if storage == "mcap"
                                            else CompressionMode.MESSAGE,
                                            CompressionFormat.ZSTD)
            self.writer.open()
            if storage == "mcap":
                _write_chunk_crcs(self.writer.storage)
            self.connections = {}
            for topic, msgtype in topics.items():
                registry.ensure(msgtype)
                self.connections[topic] = self.writer.add_connection(
                    topic, msgtype, typestore=registry.store,
                    offered_qos_profiles=(qos or {}).get(topic, ()))
        except OSError as exc:
            raise BagWriteError(f"cannot create bag {self.path}: {exc}") from exc

    def write(self, topic: str, t_ns: int, data) -> None:
        try:
            self.writer.write(self.connections[topic], t_ns, data)
        except (OSError, sqlite3.Error) as exc:
            raise BagWriteError(f"writing {self.path} failed: {exc}") from exc
        self.counts[topic] += 1
        self.bytes += len(data)

    def flush_chunk(self, force: bool = False) -> None:
        """Make what was written so far crash-safe, at most every ``CHUNK_SECONDS``.

        MCAP: close the open chunk (rosbags closes one only when it holds 1 MiB; after a crash
        only closed chunks can be recovered, so slow topics would otherwise risk a whole
        episode). sqlite3: commit (rosbags commits only when the bag is closed).
        """
        now = time.monotonic()
        if not force and now - self._last_chunk < CHUNK_SECONDS:
            return
        self._last_chunk = now
        storage = self.writer.storage  # rosbags' storage writer (pinned version, tested)
        try:
            if self.storage == "sqlite3":
                storage.conn.commit()
                return
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        except (OSError, sqlite3.Error) as exc:
            raise BagWriteError(f"writing {self.path} failed: {exc}") from exc

    def close(self, custom_data: dict | None = None) -> None:
        """Finish the bag: the last chunk, the summary and metadata.yaml."""
        try:
            for key, value in (custom_data or {}).items():
                self.writer.set_custom_data(key, str(value))
            self.writer.close()
        except (OSError, sqlite3.Error) as exc:
            raise BagWriteError(f"finishing {self.path} failed: {exc}") from exc

    def abort(self) -> None:
        """Give up on the bag (its files stay, for ``recover``)."""
        try:
            storage = getattr(self.writer, "storage", None)
            bio = getattr(storage, "bio", None)
            if bio is not None:
                bio.close()
            conn = getattr(storage, "dbconn", None) or getattr(storage, "conn", None)
            if conn is not None:
                conn.close()  # uncommitted rows are rolled back; committed ones stay
        except (OSError, sqlite3.Error):
            pass
