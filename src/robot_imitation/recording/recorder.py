"""Episode recording without ROS: a dataset folder of bags, and a writer thread per recorder.

Dataset folder::

    <dataset>/
      dataset.yaml      format, version, the observation/action spec
      index.json        one entry per episode: status (recording, ok, interrupted, incomplete,
                        discarded, failed; recover adds recovered, unrecoverable), task,
                        success, seed, operator, notes, duration, per-topic counts (rewritten
                        atomically after each change)
      episode_000000/   one rosbag2 bag per episode (metadata.yaml + episode_000000.mcap)

Messages arrive already serialized (CDR) with their receive time; ``Recorder.offer`` (one) and
``offer_many`` (a batch) only count and queue them, so the caller stays cheap. A writer thread
writes the queue to the bag. Finished episodes are closed bags that nothing touches again: a crash
of the recorder can only affect the episode in progress, whose closed MCAP chunks ``recover``
salvages.
"""
from __future__ import annotations

import collections
import datetime as _dt
import json
import queue
import threading
import time
from pathlib import Path

import yaml

from ..paths import write_text_whole
from .bagwriter import BagWriteError, EpisodeBag, TypeRegistry
from .timing import PublicationClock

DATASET_FORMAT = "robot_imitation.dataset"
DATASET_VERSION = 1
_STOP = object()

class RecorderError(RuntimeError):
    pass


EPISODE_KEYS = ("task", "success", "seed", "operator", "notes", "spec", "spec_fingerprint", "name",
                "interrupted")


def episode_custom_data(entry: dict) -> dict:
    """The bag's ``custom_data`` for an episode's index entry (its metadata, prefixed)."""
    return {f"robot_imitation.{k}": v for k, v in entry.items() if k in EPISODE_KEYS}

class DatasetWriter:
    """The dataset folder: creates it, names episodes, keeps ``index.json``."""

    def __init__(self, root, spec=None):
        if not str(root).strip():
            raise RecorderError(f"dataset folder {str(root)!r}: an empty path (give the "
                                "dataset folder's path)")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RecorderError(f"dataset folder {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            # a file where a folder above it should be: say which (errno alone says "File
            # exists" or "Not a directory")
            blocker = next((p for p in self.root.parents if p.exists() and not p.is_dir()),
                           None)
            why = f"{blocker} is a file, not a folder" if blocker is not None else exc
            raise RecorderError(f"dataset folder {self.root} is not writable: {why}") from exc
        self.index_path = self.root / "index.json"
        self.episodes: list[dict] = []
        if self.index_path.is_file():
            try:
                self.episodes = json.loads(self.index_path.read_text())["episodes"]
            except (ValueError, KeyError) as exc:
                raise RecorderError(f"{self.index_path} is not a dataset index: {exc}") from exc
        meta = self.root / "dataset.yaml"
        if spec is not None:
            if meta.is_file():
                existing = yaml.safe_load(meta.read_text()) or {}
                old = existing.get("spec_fingerprint")
                if old and old != spec.fingerprint():
                    raise RecorderError(
                        f"{self.root} holds episodes recorded with another spec "
                        f"({existing.get('spec', {}).get('name')}, fingerprint {old}); "
                        f"record spec {spec.name} ({spec.fingerprint()}) into a new folder")
            else:
                write_text_whole(meta, yaml.safe_dump({
                    "format": DATASET_FORMAT, "version": DATASET_VERSION,
                    "spec_fingerprint": spec.fingerprint(), "spec": spec.to_dict()},
                    sort_keys=False))
        # what ``check`` holds the folder to: the folder itself (not one made in its place)
        # and its dataset.yaml where it has one
        self._identity = _identity(self.root)
        self._has_meta = meta.is_file()

    def check(self) -> None:
        """``RecorderError`` when the dataset folder is no longer the one opened: gone (deleted
        or moved), another folder in its place (another inode; or, the inode reused, one
        without the index of the episodes recorded), or its dataset.yaml gone. A bag written
        then would make the folder again without its spec (or go into another dataset), and
        the index rewritten from memory would list episodes that are not there."""
        try:
            identity = _identity(self.root)
        except FileNotFoundError:
            raise RecorderError(
                f"not starting: the dataset folder {self.root} is gone (deleted or moved since "
                "the recorder started): put it back, or restart the recorder to make a new "
                "one") from None
        except OSError as exc:
            raise RecorderError(f"not starting: the dataset folder {self.root} cannot be read: "
                                f"{exc}") from None
        if not self.root.is_dir():
            raise RecorderError(f"not starting: the dataset folder {self.root} is now a file, "
                                "not a folder")
        if identity != self._identity:
            raise RecorderError(
                f"not starting: the dataset folder {self.root} is another folder than the "
                "recorder's (deleted or moved, and one made in its place since the recorder "
                "started): put it back, or restart the recorder")
        if self._has_meta and not (self.root / "dataset.yaml").is_file():
            raise RecorderError(
                f"not starting: the dataset folder {self.root} lost its dataset.yaml (the spec "
                "of its episodes) since the recorder started: put it back, or restart the "
                "recorder")
        if self.episodes and not self.index_path.is_file():
            raise RecorderError(
                f"not starting: the dataset folder {self.root} lost its index.json (the index "
                f"of its {len(self.episodes)} episodes; deleted, or the folder replaced since "
                "the recorder started): put it back, or restart the recorder")

    def next_name(self) -> str:
        used = {e["name"] for e in self.episodes}
        used |= {p.name for p in self.root.glob("episode_*")}
        i = len(self.episodes)
        while f"episode_{i:06d}" in used:
            i += 1
        return f"episode_{i:06d}"

    def upsert(self, entry: dict) -> None:
        for i, e in enumerate(self.episodes):
            if e["name"] == entry["name"]:
                self.episodes[i] = {**e, **entry}
                break
        else:
            self.episodes.append(entry)
        write_text_whole(self.index_path, json.dumps({"format": DATASET_FORMAT,
                                                   "episodes": self.episodes}, indent=1))


def _identity(path: Path) -> tuple:
    st = path.stat()
    return st.st_dev, st.st_ino


class Recorder:
    """Records offered messages into one bag per episode, through a writer thread."""

    def __init__(self, dataset: DatasetWriter, storage: str = "mcap", max_queue: int = 100_000,
                 log=print, log_time: str = "receive", per_state=()):
        """``log_time``: "receive" (rosbag2's: the reception time given to ``offer``) or
        "publication" (see ``timing.PublicationClock``; ``offer`` needs source timestamps).
        ``per_state``: topics published once per state, each by one writer (the robot's stamped
        state topics, a simulation's /clock): with log time publication, a message naming no
        state is logged once each of them has delivered a message published after it."""
        if log_time not in ("receive", "publication"):
            raise ValueError(f"log_time must be receive or publication, not {log_time!r}")
        self.dataset = dataset
        self.storage = storage
        self.log_time = log_time
        self.per_state = tuple(per_state)
        self.registry = TypeRegistry()
        self.log = log
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # messages queued and not yet taken by the writer (at most max_queue)
        self._lock = threading.Lock()
        self._offer_lock = threading.Lock()  # held only to queue a message, or the stop marker
        self._bag: EpisodeBag | None = None
        self._entry: dict | None = None
        self._received: collections.Counter = collections.Counter()
        self._dropped: collections.Counter = collections.Counter()
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    @property
    def recording(self) -> bool:
        return self._entry is not None

    @property
    def episode(self) -> str | None:
        return self._entry["name"] if self._entry else None

    # ----------------------------------------------------------------- episode control
    def start(self, topics: dict, metadata: dict | None = None, qos: dict | None = None,
              required=()) -> str:
        """Open a new episode bag for ``topics`` ({topic: type}); returns its name.
        ``required``: topics without which the episode cannot be used (the spec's observations
        and actions): an episode that ends with none of one of them is ``failed``, not ok."""
        with self._lock:
            if self._entry is not None:
                raise RecorderError(f"episode {self.episode} is still being recorded")
            self.dataset.check()  # never a bag outside the dataset the index describes
            self._error = None  # the last episode's error was reported by its stop()
            name = self.dataset.next_name()
            entry = {"name": name, "path": name, "status": "recording",
                     "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "storage": self.storage, **(metadata or {})}
            # The writer thread owns the bag from opening to closing (sqlite3 connections
            # belong to the thread that made them). A queue per episode: a message offered
            # while the previous episode stopped can never end up in this one.
            q: queue.Queue = queue.Queue()
            opened = threading.Event()
            result: dict = {}
            thread = threading.Thread(
                target=self._writer, args=(self.dataset.root / name, topics, qos, q, opened,
                                           result), daemon=True, name=f"writer-{name}")
            thread.start()
            opened.wait()
            if "bag" not in result:
                thread.join()
                try:
                    self.dataset.upsert({**entry, "status": "failed", "error": result["error"]})
                except OSError as exc:
                    raise RecorderError(f"{result['error']} (and the index: {exc})") from None
                raise RecorderError(result["error"])
            try:
                self.dataset.upsert(entry)
            except OSError as exc:
                # No episode without its index entry: give the bag up (a disk full or an index
                # made unwritable since the recorder started); earlier episodes are untouched.
                q.put((_STOP, False, {}))
                thread.join()
                self.dataset.episodes = [e for e in self.dataset.episodes if e["name"] != name]
                raise RecorderError(f"cannot start {name}: the dataset index "
                                    f"{self.dataset.index_path} cannot be written: {exc}") from None
            self._required = [t for t in dict.fromkeys(required) if t in topics]
            self._received = collections.Counter({t: 0 for t in topics})
            self._dropped = collections.Counter()
            self._pending = 0
            self._entry, self._thread = entry, thread
            self._t0 = time.monotonic()
            self._queue = q
            self._bag = result["bag"]
            return name

    def offer(self, topic: str, t_ns: int, data, src_ns: int | None = None) -> None:
        """Called from subscription callbacks: count and queue, never block.

        ``t_ns``: reception time on the recorder's clock; ``src_ns``: the DDS source timestamp.
        """
        self.offer_many([(topic, t_ns, data, src_ns)])

    def offer_many(self, items: list) -> None:
        """``offer`` for a batch of ``(topic, t_ns, data, src_ns)`` in order: one queue entry.
        Past ``max_queue`` messages waiting for the writer, a batch is refused whole (dropped,
        counted per topic)."""
        with self._offer_lock:
            if self._bag is None or self._error is not None or not items:
                return
            received = self._received
            for item in items:
                received[item[0]] += 1
            if self._pending + len(items) > self.max_queue:
                for item in items:
                    self._dropped[item[0]] += 1
                return
            self._pending += len(items)
            self._queue.put_nowait(items)

    def stop(self, keep: bool = True, metadata: dict | None = None,
             interrupted: bool = False, incomplete: str | None = None) -> dict:
        """Finish the episode: drain the queue, close (or discard) the bag, update the index.

        ``interrupted``: the episode did not end, the recorder was stopped (SIGINT/SIGTERM): the
        bag is finished all the same, and the episode's status is ``interrupted``, not ``ok``
        (the dataset builder leaves it out unless asked for). ``incomplete``: what the bag of
        an episode that ended lacks (messages published in it that never reached the
        recorder): status ``incomplete``, said in the entry's ``incomplete``, left out alike."""
        with self._lock:
            if self._entry is None:
                raise RecorderError("no episode is being recorded")
            bag, entry = self._bag, {**self._entry, **(metadata or {})}
            if interrupted:
                entry["interrupted"] = True
            with self._offer_lock:  # no message can be queued behind the stop marker
                self._bag = None
                self._queue.put((_STOP, keep, episode_custom_data(entry)))
            self._thread.join()
            entry.update(duration=round(time.monotonic() - self._t0, 3),
                         counts=dict(bag.counts), received=dict(self._received),
                         dropped=dict(self._dropped), bytes=bag.bytes)
            empty = [t for t in self._required if not bag.counts.get(t)]
            if self._error is not None:
                entry.update(status="failed", error=str(self._error))
            elif empty and keep and not interrupted:
                # a spec topic that delivered nothing (a subscription the middleware never fed,
                # or samples held back past the stop): no step of it can be trained on
                entry.update(status="failed", error=f"no messages on {', '.join(empty)}")
            else:
                entry["status"] = ("discarded" if not keep else
                                   "interrupted" if interrupted else
                                   "incomplete" if incomplete else "ok")
                if incomplete and keep:
                    entry["incomplete"] = incomplete
            self._entry = None
            try:
                self.dataset.upsert(entry)
            except OSError as exc:
                entry.setdefault("error", f"index not updated: {exc}")
            return entry

    # ----------------------------------------------------------------- writer thread
    def _writer(self, path, topics, qos, q: queue.Queue, opened: threading.Event,
                result: dict) -> None:
        try:
            bag = EpisodeBag(path, topics, self.registry, self.storage, qos=qos)
        except BagWriteError as exc:
            result["error"] = str(exc)
            opened.set()
            return
        result["bag"] = bag
        opened.set()
        clock = None
        if self.log_time == "publication":
            # /clock carries its instant as a header carries a stamp (the same CDR layout)
            clock = PublicationClock([t for t, ty in topics.items()
                                      if self.registry.has_header(ty)
                                      or ty == "rosgraph_msgs/msg/Clock"],
                                     answers=[t for t, ty in topics.items()
                                              if ty.endswith("MultiArray")],
                                     per_state=[t for t in self.per_state if t in topics])
        while True:
            try:
                item = q.get(timeout=0.05)
            except queue.Empty:
                item = None
            stop = item is not None and item[0] is _STOP
            batch = () if item is None or stop else item
            if batch:
                with self._offer_lock:
                    self._pending -= len(batch)
            if self._error is None:
                try:
                    if clock is None:
                        for topic, t_ns, data, _ in batch:
                            bag.write(topic, t_ns, data)
                    else:
                        for topic, recv_ns, data, src_ns in batch:
                            clock.add(topic, recv_ns, data, recv_ns if src_ns is None else src_ns)
                        for decided in clock.ready(flush=stop):
                            bag.write(*decided)
                    bag.flush_chunk()
                except BagWriteError as exc:
                    self._error = exc
                    self.log(f"episode {bag.path.name} failed: {exc}")
            if stop:
                self._finish(bag, keep=item[1], custom=item[2])
                return

    def _finish(self, bag: EpisodeBag, keep: bool, custom: dict) -> None:
        if self._error is not None or not keep:
            bag.abort()
            if not keep and self._error is None:
                _remove_tree(bag.path)
            return
        try:
            bag.close(custom)
        except BagWriteError as exc:
            bag.abort()
            self._error = exc

def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() or child.is_symlink() else child.rmdir()
    if path.exists():
        path.rmdir()
