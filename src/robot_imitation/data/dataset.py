"""Recorded episodes (rosbag2 bags) to time-aligned training arrays, cached.

A dataset is a folder written by the recorder::

    <dataset>/
      dataset.yaml       {format: robot_imitation.dataset, version: 1, spec: <Spec.to_dict()>}
      index.json         {"episodes": [{"name", "path", "status", "success", "seed", ...}]}
      episode_000000/    one rosbag2 bag per episode

or any folder of bags (folders with metadata.yaml, or .mcap/.db3 files), e.g. from
``ros2 bag record``; the spec must then be given.

Which episodes are used
-----------------------
Index entries with status ``ok`` are used. Episodes that did not end are left out unless
``include_interrupted``: status ``interrupted`` (the recorder was stopped by SIGINT/SIGTERM;
older datasets mark these ``ok`` with ``interrupted: true``) and ``recovered`` (salvaged by
``recover`` after a crash: cut short), and ``incomplete`` (an episode that ended, whose bag
lacks messages of it that never reached the recorder: its entry's ``incomplete`` says which).
Every other status (``recording``: never finished or not
yet recovered; ``failed``, ``discarded``, ``unrecoverable``) is left out. Nothing is left out
silently: ``Dataset.summary`` lists what was used and what was skipped, per reason, with the
episodes' names, and the steps dropped per reason (``describe`` renders it in one line); the
trainer prints it and stores it with the checkpoints.

Alignment rule
--------------
This is the contract between what is recorded and what a policy learns from:

1. Steps are defined by the messages of the FIRST action field's topic (e.g.
   /arm_controller/commands), at their log (receive) time t_a. If they come faster than the
   spec's control rate (median interval < 0.75 / control_rate), one per control period is kept:
   the first in each period of a grid starting at the first action (the others are counted
   with the episode's dropped steps).
2. Each observation field takes the newest message on its topic whose stamp (the header stamp
   when the message has a header, else its log time) is <= t_a. (In lockstep, the recorder's
   clock is sim time, which does not advance between a state and the command answering it, so
   state k and command k share the time t_k; in real time, the command arrives a few ms after
   its state.)
3. Each other action field (e.g. the gripper) takes the message on its topic nearest to t_a in
   log time within half a control period; if there is none, the newest one before t_a.
4. A step is dropped (and counted in the episode's ``dropped``) when any observation is missing
   or older than 2 control periods (t_a - stamp > 2 / control_rate), an action field has no
   message yet, or a value the step takes is NaN or infinite (a broken sensor or controller:
   one such step made the whole training run's loss NaN).
5. Images are decoded with ``Spec.extract`` (uint8, the spec's size).
6. Episode boundary: when the bag holds the task's status (``/episode/status``,
   diagnostic_msgs/DiagnosticArray with an ``episode`` value, as the bridge publishes it),
   steps logged before the first status of the episode the bag ends with are dropped (a
   recorder started before the simulation reset records a few messages of the episode before).
7. Executed source: when the bag holds the command mux's ``/command_mux/source``
   (std_msgs/String, no header), each step's source is the message nearest t_a in log time
   within half a control period, else the newest before ("" when there is none). Building with
   ``sources`` keeps only the steps one of those sources drove (HG-DAgger: the person's
   interventions), each run of consecutive kept steps an episode of its own
   (``<episode>/<k>``).

Times are compared as integer nanoseconds, so equal stamps are equal.

Arrays per episode: ``obs`` {key: (T, *shape)} (float64; images uint8), ``actions``
(T, action_dim) float64 (the action fields concatenated in spec order), ``t`` (T,), the
steps' log times in seconds, and ``executed`` (T,) str when the bag records the source.

Cache
-----
Each decoded episode is kept in ``<dataset>/cache/`` (or ``cache_dir``) as an ``.npz`` file,
listed in ``manifest.json``. Its key covers ``BUILDER_VERSION``, the spec fingerprint, and the
path (relative to the dataset), size and modification time of each of the bag's files: any change
to one of them decodes that episode again; an unchanged episode is never decoded twice. The split
and the statistics are computed after loading (they are cheap), so they are not part of the key.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..paths import read_yaml
from ..spec import Spec, SpecError
from .bags import STORAGE_SUFFIXES, BagError, bag_files, open_bag

BUILDER_VERSION = 6  # 4: drop reasons per episode in the cache; 5: non-finite steps dropped;
#                     6: subsampled commands counted
DATASET_FORMAT = "robot_imitation.dataset"
DATASET_VERSION = 1
USABLE_STATUSES = ("ok",)
# used only with include_interrupted
INTERRUPTED_STATUSES = ("interrupted", "recovered", "incomplete")
FAST_COMMANDS = 0.75   # commands closer than this many control periods get subsampled (rule 1)
MAX_AGE_PERIODS = 2.0  # observations older than this many control periods drop the step (rule 4)
STD_FLOOR = 1e-6
CACHE_MANIFEST = "manifest.json"
STATUS_TOPIC = "/episode/status"
STATUS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
SOURCE_TOPIC = "/command_mux/source"
SOURCE_TYPE = "std_msgs/msg/String"


class DatasetError(ValueError):
    """A dataset or bag that cannot be turned into training arrays (names bag, topic, field)."""


# ===================================================================== data classes
@dataclass
class Episode:
    """One episode's aligned arrays (see the module docstring for their layout)."""

    name: str
    obs: dict
    actions: np.ndarray
    t: np.ndarray
    source: str                    # the bag the arrays come from
    dropped: int = 0               # steps dropped by rules 1 (subsampled), 4 and 6
    success: bool | None = None
    seed: int | None = None
    executed: np.ndarray | None = None  # (T,) str: the source that drove each step (rule 7)
    drop_reasons: dict = field(default_factory=dict)  # {reason: steps} of ``dropped``

    def __len__(self) -> int:
        return len(self.t)

    def segments(self, sources) -> list:
        """The runs of consecutive steps driven by one of ``sources`` (rule 7), each an
        ``Episode`` named ``<name>/<k>``; [] when none of them drove."""
        if self.executed is None:
            raise DatasetError(f"{self.source}: the bag has no {SOURCE_TOPIC}: which steps "
                               f"{sorted(sources)} drove is unknown (record the command mux's "
                               "source topic with the episode)")
        keep = np.isin(self.executed, list(sources))
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        out = []
        for k, (a, b) in enumerate(zip(edges[::2], edges[1::2])):
            out.append(Episode(name=f"{self.name}/{k}",
                               obs={key: v[a:b] for key, v in self.obs.items()},
                               actions=self.actions[a:b], t=self.t[a:b], source=self.source,
                               dropped=self.dropped if k == 0 else 0, success=self.success,
                               seed=self.seed, executed=self.executed[a:b],
                               drop_reasons=self.drop_reasons if k == 0 else {}))
        return out


@dataclass(frozen=True)
class FieldStats:
    """Per-element statistics of one array over the training split."""

    mean: np.ndarray
    std: np.ndarray                # floored at STD_FLOOR
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> "FieldStats":
        return cls(mean=values.mean(axis=0), std=np.maximum(values.std(axis=0), STD_FLOOR),
                   min=values.min(axis=0), max=values.max(axis=0))

    def to_dict(self) -> dict:
        """Plain lists, for JSON."""
        return {k: getattr(self, k).tolist() for k in ("mean", "std", "min", "max")}


@dataclass
class Dataset:
    path: Path
    spec: Spec
    episodes: list
    train: list
    val: list
    stats: dict                    # {"observations": {key: FieldStats}, "actions": FieldStats}
    decoded: list = field(default_factory=list)  # episodes read from their bags in this build
    summary: dict = field(default_factory=dict)  # what was used and skipped (``build_summary``)

    def describe(self) -> str:
        """``summary`` in one line (empty for a dataset assembled by hand)."""
        return describe_summary(self.summary) if self.summary else ""

    def arrays(self, split: str = "train") -> dict:
        """The split's steps concatenated: ``obs`` {key: array}, ``actions``, ``t``, and
        ``episode`` (each step's index into ``episodes``)."""
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        chosen = self.episodes if split == "all" else getattr(self, split)
        index = {id(e): i for i, e in enumerate(self.episodes)}
        return _concatenate(self.spec, chosen, [index[id(e)] for e in chosen])


def _concatenate(spec: Spec, episodes: list, numbers: list) -> dict:
    def cat(arrays, shape, dtype):
        return np.concatenate(arrays) if arrays else np.zeros((0, *shape), dtype)

    return {
        "obs": {f.key: cat([e.obs[f.key] for e in episodes], f.shape,
                           np.uint8 if f.is_image else np.float64) for f in spec.observations},
        "actions": cat([e.actions for e in episodes], (spec.action_dim,), np.float64),
        "t": cat([e.t for e in episodes], (), np.float64),
        "episode": cat([np.full(len(e), n, np.int64) for e, n in zip(episodes, numbers)], (),
                       np.int64),
    }


# ===================================================================== one episode
@dataclass
class _Stream:
    """The messages of one topic: log times, stamps (ns) and each field's array."""

    log_ns: list = field(default_factory=list)
    stamp_ns: list = field(default_factory=list)
    values: dict = field(default_factory=dict)


def _stamp_ns(msg, log_ns: int) -> int:
    """Header stamp in integer ns (``spec.message_stamp`` in float seconds would round), else
    the log time."""
    header = getattr(msg, "header", None)
    if header is None:
        return log_ns
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def build_episode(bag_path, spec: Spec, name: str | None = None) -> Episode:
    """Read one bag and align it to ``spec`` (rules in the module docstring)."""
    bag_path = Path(bag_path)
    try:
        with open_bag(bag_path) as bag:
            _check_topics(bag, spec)
            streams = _read_streams(bag, spec)
            start_ns = _episode_start(bag)
            sources = _read_sources(bag)
    except BagError as exc:
        raise DatasetError(str(exc)) from None
    obs, actions, t_ns, drops = _align(spec, streams, bag_path, start_ns)
    executed = None
    if sources is not None:
        index, found = _nearest_logged(sources, t_ns, 0.5e9 / spec.control_rate)
        names = np.asarray(sources.values["source"] or [""], dtype=str)
        executed = np.where(found, names[np.clip(index, 0, len(names) - 1)], "")
    return Episode(name=name or bag_path.name, obs=obs, actions=actions, t=t_ns * 1e-9,
                   source=str(bag_path), dropped=sum(drops.values()), executed=executed,
                   drop_reasons=dict(drops))


def _check_topics(bag, spec: Spec) -> None:
    topics = bag.topics
    for f in spec.fields:
        what = f"{bag.path}: {f.key} ({f.type}.{f.field})"
        if f.topic not in topics:
            raise DatasetError(f"{what}: topic {f.topic} is not in the bag (it has "
                               f"{sorted(topics)})")
        if topics[f.topic].msgtype != f.type:
            raise DatasetError(f"{what}: topic {f.topic} holds {topics[f.topic].msgtype}, the "
                               f"spec expects {f.type}")
        if topics[f.topic].count == 0:
            raise DatasetError(f"{what}: topic {f.topic} has no messages")


def _episode_start(bag) -> int | None:
    """Rule 6: log time of the first status of the episode the bag ends with, if any."""
    info = bag.topics.get(STATUS_TOPIC)
    if info is None or info.msgtype != STATUS_TYPE or info.count == 0:
        return None
    first_seen: dict = {}
    last = None
    for _, log_ns, msg in bag.messages([STATUS_TOPIC]):
        values = {kv.key: kv.value for st in msg.status[:1] for kv in st.values}
        episode = values.get("episode")
        if episode is not None:
            first_seen.setdefault(episode, log_ns)
            last = episode
    return first_seen.get(last)


def _read_sources(bag):
    """Rule 7: the log times and names of the executed sources, as a ``_Stream`` (None when
    the bag does not record them)."""
    info = bag.topics.get(SOURCE_TOPIC)
    if info is None or info.msgtype != SOURCE_TYPE:
        return None
    stream = _Stream(values={"source": []})
    for _, log_ns, msg in bag.messages([SOURCE_TOPIC]):
        stream.log_ns.append(log_ns)
        stream.values["source"].append(str(msg.data))
    return stream


def _read_streams(bag, spec: Spec) -> dict:
    by_topic: dict = {}
    for f in spec.fields:
        by_topic.setdefault(f.topic, []).append(f)
    streams = {topic: _Stream(values={f.key: [] for f in fields})
               for topic, fields in by_topic.items()}
    for topic, log_ns, msg in bag.messages(by_topic):
        stream = streams[topic]
        stream.log_ns.append(log_ns)
        stream.stamp_ns.append(_stamp_ns(msg, log_ns))
        for f in by_topic[topic]:
            try:
                stream.values[f.key].append(spec.extract(f, msg))
            except SpecError as exc:
                raise DatasetError(f"{bag.path}: {f.key} ({f.type}.{f.field}), message logged "
                                   f"at {log_ns} ns: {exc}") from None
    return streams


def _align(spec: Spec, streams: dict, bag_path: Path, start_ns: int | None = None):
    """(obs, actions, t_ns, drop reasons) by the alignment rule."""
    period = 1e9 / spec.control_rate
    steps_field = spec.actions[0]
    t_a = np.asarray(streams[steps_field.topic].log_ns, dtype=np.int64)
    picks = {steps_field.key: np.arange(len(t_a))}
    drops = Counter()
    if len(t_a) > 1 and np.median(np.diff(t_a)) < FAST_COMMANDS * period:
        cells = np.floor((t_a - t_a[0]) / period)
        first_in_cell = np.unique(cells, return_index=True)[1]
        # the commands between (said, as every step not taken)
        drops[f"commands faster than {spec.control_rate:g} Hz (one per period kept)"] = \
            len(t_a) - len(first_in_cell)
        t_a, picks[steps_field.key] = t_a[first_in_cell], first_in_cell

    keep = np.ones(len(t_a), bool)
    if start_ns is not None:
        keep = t_a >= start_ns
        drops["before the episode started"] = int(np.sum(~keep))
    for f in spec.observations:
        index, ok, stale = _newest_stamped_before(streams[f.topic], t_a, MAX_AGE_PERIODS * period)
        drops.update({f"no {f.key} yet": int(np.sum(~ok & keep)),
                      f"{f.key} older than {MAX_AGE_PERIODS:g} periods":
                          int(np.sum(ok & stale & keep))})
        keep &= ok & ~stale
        picks[f.key] = index
    for f in spec.actions[1:]:
        index, ok = _nearest_logged(streams[f.topic], t_a, period / 2)
        drops[f"no {f.key} yet"] += int(np.sum(~ok & keep))
        keep &= ok
        picks[f.key] = index
    for f in (*spec.observations, *spec.actions):  # rule 4: a NaN or infinite value
        if f.is_image or not len(picks[f.key]):
            continue
        values = streams[f.topic].values[f.key]
        finite = np.isfinite(np.stack(values).reshape(len(values), -1)).all(axis=1)
        bad = ~finite[picks[f.key]] & keep
        drops[f"non-finite {f.key}"] += int(np.sum(bad))
        keep &= ~bad
    drops = Counter({k: n for k, n in drops.items() if n})

    if not keep.any():
        raise DatasetError(_no_steps_message(spec, streams, bag_path, len(t_a), drops, period))
    rows = {key: index[keep] for key, index in picks.items()}
    obs = {f.key: np.stack([streams[f.topic].values[f.key][i] for i in rows[f.key]])
           for f in spec.observations}
    actions = np.concatenate(
        [np.stack([streams[f.topic].values[f.key][i] for i in rows[f.key]])
         for f in spec.actions], axis=1)
    return obs, actions, t_a[keep], drops


def _newest_stamped_before(stream: _Stream, t_a: np.ndarray, max_age: float):
    """Rule 2: index of the newest message stamped <= t_a; found; older than ``max_age``."""
    stamps = np.asarray(stream.stamp_ns, dtype=np.int64)
    order = np.lexsort((np.arange(len(stamps)), stamps))  # by stamp, then by arrival
    pos = np.searchsorted(stamps[order], t_a, side="right") - 1
    found = pos >= 0
    index = order[np.maximum(pos, 0)]
    stale = found & (t_a - stamps[index] > max_age)
    return index, found, stale


def _nearest_logged(stream: _Stream, t_a: np.ndarray, window: float):
    """Rule 3: index of the message nearest t_a in log time within ``window``, else the newest
    logged at or before t_a; found."""
    logs = np.asarray(stream.log_ns, dtype=np.int64)
    after = np.searchsorted(logs, t_a, side="right")
    before = after - 1
    has_before, has_after = before >= 0, after < len(logs)
    gap_before = np.where(has_before, t_a - logs[np.maximum(before, 0)], np.inf)
    gap_after = np.where(has_after, logs[np.minimum(after, len(logs) - 1)] - t_a, np.inf)
    use_after = (gap_after < gap_before) & (gap_after <= window)
    return np.where(use_after, after, before), use_after | has_before


def _no_steps_message(spec, streams, bag_path, candidates, drops, period) -> str:
    topic = spec.actions[0].topic
    text = (f"{bag_path}: no steps: all {candidates} messages on {topic} (the steps) were "
            f"dropped: " + ", ".join(f"{reason}: {n}" for reason, n in drops.most_common()))
    for f in spec.observations:
        s = streams[f.topic]
        offset = np.median(np.asarray(s.log_ns, np.int64) - np.asarray(s.stamp_ns, np.int64))
        if abs(offset) > MAX_AGE_PERIODS * period:
            text += (f". {f.topic} is logged {offset * 1e-9:.3g} s after its header stamps: the "
                     "bag was recorded on another clock than the one stamping the messages "
                     "(record with use_sim_time when the stamps are simulation time)")
            break
    return text


# ===================================================================== the dataset
def build_dataset(path, spec: Spec | str | None = None, val_fraction: float = 0.1, seed: int = 0,
                  cache: bool = True, cache_dir=None, sources=None,
                  include_interrupted: bool = False) -> Dataset:
    """Build (or load from the cache) every usable episode of the dataset at ``path``.

    ``spec`` (a ``Spec``, or a spec name or path) defaults to the dataset's own (dataset.yaml);
    a plain folder of bags needs it. Episodes are split into train and validation by episode
    (``val_fraction``, shuffled with ``seed``; at least one validation episode once there are
    two); normalization statistics come from the training split only.

    ``sources`` (names of command sources, e.g. ``["human"]``): keep only the steps those
    sources drove, by the recorded executed source (rule 7), each run of them an episode.

    ``include_interrupted``: also use the episodes that did not end (status ``interrupted`` or
    ``recovered``, see "Which episodes are used"). ``Dataset.summary`` says what was used and
    skipped.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder" if not root.exists() else
                           f"{root}: a dataset is a folder (for one bag file, use build_episode)")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    spec = dataset_spec(root, spec)
    entries, skipped = _usable_episodes(root, include_interrupted)
    store = _Cache(Path(cache_dir) if cache_dir else root / "cache", root, spec) if cache else None

    keys = [store.key(e["bag"]) for e in entries] if store else [None] * len(entries)
    episodes = [store.load(e, key) if store else None for e, key in zip(entries, keys)]
    pending = [i for i, episode in enumerate(episodes) if episode is None]
    progress = Progress(len(pending), "decoding bags")
    for done, i in enumerate(pending, 1):
        entry = entries[i]
        episodes[i] = build_episode(entry["bag"], spec, name=entry["name"])
        episodes[i].success, episodes[i].seed = entry.get("success"), entry.get("seed")
        if store:
            store.add(entry["name"], keys[i], episodes[i])
        progress.update(done, entry["name"])
    progress.close()
    if store:
        store.save()
    decoded = [episodes[i].name for i in pending]
    summary = build_summary(episodes, skipped, include_interrupted)
    if sources:
        whole = sum(len(e) for e in episodes)
        episodes = [seg for e in episodes for seg in e.segments(sources)]
        if not episodes:
            raise DatasetError(f"{root}: no step was driven by {sorted(sources)} in any "
                               f"episode (by {SOURCE_TOPIC})")
        summary.update(sources=sorted(sources), steps=sum(len(e) for e in episodes),
                       steps_of_all=whole)

    train, val = split_episodes(episodes, val_fraction, seed)
    return Dataset(path=root, spec=spec, episodes=episodes, train=train, val=val,
                   stats=compute_stats(spec, train), decoded=decoded, summary=summary)


def iter_episodes(path, spec: Spec | str | None = None, include_interrupted: bool = False,
                  cache: bool = True):
    """(spec, {skip reason: [names]}, their number, generator of (``Episode``, index entry)):
    the usable episodes of the dataset at ``path`` one at a time, in dataset order, for work
    that streams through a dataset (export) instead of holding it whole. Episodes found in the builder's cache are
    read from it; the others are decoded (and not added to the cache)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    spec = dataset_spec(root, spec)
    entries, skipped = _usable_episodes(root, include_interrupted)
    store = _Cache(root / "cache", root, spec) if cache else None

    def episodes():
        for entry in entries:
            episode = store.load(entry, store.key(entry["bag"])) if store else None
            if episode is None:
                episode = build_episode(entry["bag"], spec, name=entry["name"])
            episode.success, episode.seed = entry.get("success"), entry.get("seed")
            yield episode, entry

    return spec, skipped, len(entries), episodes()


def build_summary(episodes: list, skipped: dict, include_interrupted: bool) -> dict:
    """What a build used and left out: ``used`` (episode names), ``steps``, ``skipped``
    ({reason: [names]}), ``dropped`` ({reason: steps}), ``include_interrupted``."""
    dropped: Counter = Counter()
    for e in episodes:
        dropped.update(e.drop_reasons or ({"reason not recorded": e.dropped} if e.dropped
                                          else {}))
    return {"used": [e.name for e in episodes], "steps": sum(len(e) for e in episodes),
            "skipped": {reason: list(names) for reason, names in skipped.items()},
            "dropped": dict(dropped.most_common()), "include_interrupted": include_interrupted}


def describe_summary(summary: dict, names: int = 5) -> str:
    """``build_summary`` in one line, e.g. "used 18 episodes (2,340 steps); skipped 2: status
    recording (episode_000003), interrupted (episode_000007); dropped 14 steps: ..."."""
    def listed(items: list) -> str:
        shown = ", ".join(items[:names])
        return shown + (f", ... {len(items) - names} more" if len(items) > names else "")

    used = summary["used"]
    text = f"used {len(used)} episode{'s' if len(used) != 1 else ''} ({summary['steps']:,} steps"
    if summary.get("sources"):
        text += (f" driven by {'/'.join(summary['sources'])}, of {summary['steps_of_all']:,} "
                 "in those episodes")
    text += ")"
    skipped = summary["skipped"]
    total = sum(len(v) for v in skipped.values())
    if total:
        text += f"; skipped {total}: " + ", ".join(
            f"{reason} ({listed(names_)})" for reason, names_ in skipped.items())
    dropped = summary["dropped"]
    if dropped:
        text += (f"; dropped {sum(dropped.values()):,} steps: "
                 + ", ".join(f"{reason} {n}" for reason, n in dropped.items()))
    return text


def split_episodes(episodes: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val), by episode, each in dataset order."""
    n = len(episodes)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return ([e for i, e in enumerate(episodes) if i not in chosen],
            [e for i, e in enumerate(episodes) if i in chosen])


def compute_stats(spec: Spec, episodes: list) -> dict:
    """``FieldStats`` of each low-dimensional observation and of the actions over ``episodes``."""
    if not episodes:
        raise DatasetError("no episodes to compute normalization statistics from")
    arrays = _concatenate(spec, episodes, range(len(episodes)))
    obs = spec.derive({f.key: arrays["obs"][f.key] for f in spec.low_dim_observations})
    return {"observations": {f.key: FieldStats.of(obs[f.key]) for f in spec.policy_inputs},
            "actions": FieldStats.of(arrays["actions"])}


def dataset_spec(root: Path, spec: Spec | str | None = None) -> Spec:
    """``spec`` (a Spec, a spec name or a path), or by default the dataset's own (dataset.yaml)."""
    if isinstance(spec, Spec):
        return spec
    try:
        if spec is not None:
            return Spec.load(spec)
        meta = read_dataset_yaml(root)
        if meta is None:
            raise DatasetError(f"{root}: no dataset.yaml (a plain folder of bags): give the spec")
        own = Spec.from_dict(meta["spec"], where=str(root / "dataset.yaml"))
        stored = meta.get("spec_fingerprint")
        if stored is not None and stored != own.fingerprint():
            raise DatasetError(f"{root / 'dataset.yaml'}: its spec does not match its "
                               "spec_fingerprint (edited by hand?); the bags were recorded "
                               "under the spec it was written with: to build with another "
                               "one, give it (--spec)")
        return own
    except SpecError as exc:
        raise DatasetError(str(exc)) from None


def read_dataset_yaml(root: Path) -> dict | None:
    """The dataset.yaml of ``root`` (validated), or None for a plain folder of bags."""
    path = Path(root) / "dataset.yaml"
    if not path.is_file():
        return None
    meta = read_yaml(path, DatasetError)
    if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path}: not a {DATASET_FORMAT} file")
    if meta.get("version") != DATASET_VERSION:
        raise DatasetError(f"{path}: dataset version {meta.get('version')} is not supported "
                           f"(this builder reads version {DATASET_VERSION})")
    if not isinstance(meta.get("spec"), dict):
        raise DatasetError(f"{path}: no spec")
    return meta


def read_index(root: Path) -> list | None:
    """The entries of ``root``/index.json, or None when there is no index."""
    path = Path(root) / "index.json"
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a valid episode index ({exc})") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: not a valid episode index (episodes is a "
                           f"{type(entries).__name__}, not a list)")
    seen: dict = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"name", "path", "status"} <= set(e):
            raise DatasetError(f"{path}: episode {i} needs name, path and status")
        bad = [k for k in ("name", "path", "status") if not isinstance(e[k], str) or not e[k]]
        if bad:
            raise DatasetError(f"{path}: episode {i}: {bad[0]} must be a non-empty string, "
                               f"got {e[bad[0]]!r}")
        for key in ("name", "path"):  # (a copied entry was trained on twice)
            first = seen.setdefault((key, e[key]), i)
            if first != i:
                raise DatasetError(f"{path}: episodes {first} and {i} have the same {key} "
                                   f"{e[key]!r}: an index lists each episode once")
    return entries


def find_bags(root: Path) -> list:
    """The bags under the folder ``root``: folders with metadata.yaml (not searched further;
    ``root`` itself when it is one), and storage files (.mcap, .db3) outside them."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        if "metadata.yaml" in files:
            found.append(Path(folder))
            subfolders.clear()
            continue
        found += [Path(folder, f) for f in sorted(files) if Path(f).suffix in STORAGE_SUFFIXES]
    return found


def list_episodes(root: Path) -> list:
    """Every episode of the dataset folder ``root``, in dataset order: the index.json entries
    with ``bag`` (the bag's path) added, or, without an index, one entry per bag found (name,
    bag; status, success and seed None)."""
    root = Path(root)
    index = read_index(root)
    if index is None:
        return [{"name": b.relative_to(root).as_posix() if b != root else b.name, "bag": b,
                 "status": None, "success": None, "seed": None} for b in find_bags(root)]
    return [{**e, "bag": root / e["path"]} for e in index]


def skip_reason(entry: dict, include_interrupted: bool = False) -> str | None:
    """Why the index entry ``entry`` is not built (None: it is): see "Which episodes are
    used" in the module docstring."""
    status = entry["status"]
    if status is None:  # a plain folder of bags: no index
        return None
    interrupted = status == "interrupted" or (status == "ok" and entry.get("interrupted"))
    if interrupted or status in ("recovered", "incomplete"):
        if include_interrupted:
            return None
        return ("interrupted (stopped before the episode ended)" if interrupted
                else "recovered after a recorder crash (cut short)" if status == "recovered"
                else "incomplete (messages of the episode never reached the recorder)")
    if status in USABLE_STATUSES:
        return None
    return f"status {status}"


def _usable_episodes(root: Path, include_interrupted: bool = False) -> tuple[list, dict]:
    """(the episodes to build, {skip reason: [names]}): see ``skip_reason``; bags present."""
    entries = list_episodes(root)
    if not entries:
        raise DatasetError(f"{root}: no bags (folders with metadata.yaml, or "
                           f"{'/'.join(STORAGE_SUFFIXES)} files) and no index.json")
    usable, skipped = [], {}
    for e in entries:
        reason = skip_reason(e, include_interrupted)
        if reason is None:
            usable.append(e)
        else:
            skipped.setdefault(reason, []).append(e["name"])
    if not usable:
        hint = ("" if include_interrupted or not any(
            r.startswith(("interrupted", "recovered", "incomplete")) for r in skipped)
            else "; include_interrupted (train --include-interrupted) uses the episodes cut "
                 "short too")
        raise DatasetError(f"{root / 'index.json'}: no episode to use: "
                           + "; ".join(f"{reason}: {', '.join(names)}"
                                       for reason, names in skipped.items()) + hint)
    for e in usable:
        if not e["bag"].exists():
            raise DatasetError(f"{root / 'index.json'}: episode {e['name']}: its bag {e['bag']} "
                               "does not exist")
    return usable, skipped


# ===================================================================== cache
class _Cache:
    """Decoded episodes as ``.npz`` files named by their key, listed in ``manifest.json``."""

    def __init__(self, directory: Path, root: Path, spec: Spec):
        self.dir, self.root, self.spec = directory, root, spec
        self.entries: dict = {}
        try:
            manifest = json.loads((directory / CACHE_MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("builder_version") == BUILDER_VERSION:
                self.previous = manifest["episodes"]
            else:
                self.previous = {}
        except (OSError, ValueError, KeyError, AttributeError):
            self.previous = {}
        if not isinstance(self.previous, dict):  # a damaged manifest: every episode anew
            self.previous = {}

    def key(self, bag: Path) -> str:
        try:
            files = bag_files(bag)
        except BagError as exc:
            raise DatasetError(str(exc)) from None
        described = []
        for f in files:
            st = f.stat()
            described.append([os.path.relpath(f, self.root), st.st_size, st.st_mtime_ns])
        text = json.dumps({"builder": BUILDER_VERSION, "spec": self.spec.fingerprint(),
                           "files": described}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def load(self, entry: dict, key: str) -> Episode | None:
        """The cached episode of ``entry`` if its key is still ``key``, else None."""
        meta = self.previous.get(entry["name"])
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        # a damaged cache file or manifest entry (truncated, edited): decoded from its bag again
        try:
            with np.load(self.dir / meta["file"], allow_pickle=False) as npz:
                obs = {f.key: npz[f"obs.{f.key}"] for f in self.spec.observations}
                actions, t = npz["actions"], npz["t"]
                executed = npz["executed"] if "executed" in npz.files else None
            if actions.shape[1:] != (self.spec.action_dim,) or any(
                    obs[f.key].shape[1:] != f.shape for f in self.spec.observations):
                return None
            episode = Episode(name=entry["name"], obs=obs, actions=actions, t=t,
                              source=str(meta["source"]), dropped=int(meta["dropped"]),
                              success=entry.get("success"), seed=entry.get("seed"),
                              executed=executed,
                              drop_reasons=dict(meta.get("drop_reasons") or {}))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None
        self.entries[entry["name"]] = meta
        return episode

    def add(self, name: str, key: str, episode: Episode) -> None:
        filename = f"episode-{key[:32]}.npz"
        arrays = {f"obs.{k}": v for k, v in episode.obs.items()}
        if episode.executed is not None:
            arrays["executed"] = episode.executed
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{filename}.{os.getpid()}.tmp.npz"
            np.savez(tmp, actions=episode.actions, t=episode.t, **arrays)
            tmp.replace(self.dir / filename)
        except OSError as exc:
            warnings.warn(f"dataset cache {self.dir}: cannot write {filename}: {exc}",
                          stacklevel=3)
            return
        self.entries[name] = {"key": key, "file": filename, "steps": len(episode),
                              "dropped": episode.dropped, "drop_reasons": episode.drop_reasons,
                              "source": episode.source}

    def save(self) -> None:
        """Write the manifest of this build's episodes; delete files no longer listed."""
        manifest = {"format": "robot_imitation.dataset_cache", "builder_version": BUILDER_VERSION,
                    "spec": self.spec.name, "spec_fingerprint": self.spec.fingerprint(),
                    "episodes": self.entries}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{CACHE_MANIFEST}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            tmp.replace(self.dir / CACHE_MANIFEST)
            listed = {e["file"] for e in self.entries.values()}
            for old in self.dir.glob("episode-*.npz"):
                if old.name not in listed:
                    old.unlink()
        except OSError as exc:
            warnings.warn(f"dataset cache {self.dir}: cannot write the manifest: {exc}",
                          stacklevel=3)


# ===================================================================== progress
class Progress:
    """A one-line progress bar on stderr: drawn on a terminal, elsewhere only once the work has
    taken more than 2 s (then one line per second at most)."""

    def __init__(self, total: int, what: str, stream=None):
        self.total, self.what = total, what
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()
        self.drawn = False

    def update(self, done: int, label: str) -> None:
        now = time.monotonic()
        if not self.tty and (now - self.start <= 2.0 or (now - self.last < 1.0
                                                          and done < self.total)):
            return
        self.last, self.drawn = now, True
        bar = "#" * (20 * done // max(self.total, 1))
        line = f"{self.what} [{bar:<20}] {done}/{self.total} {label}"
        self.stream.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
