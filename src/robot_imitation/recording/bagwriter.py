"""Writing rosbag2 bags (MCAP or sqlite3) of serialized messages, one bag per episode.

Built on ``rosbags``' writer, which produces bags that ``ros2 bag info/play``, Foxglove and any
rosbag2 reader open (metadata.yaml version 9 with type description hashes). Message
definitions come from the ROS 2 Kilted type store, or from the ``.msg`` files of any installed
package (so any message type can be recorded).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

CHUNK_SECONDS = 1.0  # an open MCAP chunk is closed (and reaches the disk) at least this often


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
