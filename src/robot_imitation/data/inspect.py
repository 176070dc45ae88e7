"""What a dataset holds (``robot-imitation info``) and a picture of one episode (``plot``).

``dataset_info`` reads the index and each bag's summary (no message is decoded);
``format_info`` renders it for a terminal, and ``unreadable_summary`` names the episodes whose
bags cannot be read (``robot-imitation info`` then exits 1, after printing everything). Bags the
index already gives up on (status discarded: deleted; failed; unrecoverable) are listed but not
counted. Per bag it also says what cannot be checked: topics that cannot be decoded (with the
reason), and MCAP chunks without a CRC (sqlite3 bags carry no checksums at all). ``plot_episode`` aligns one episode as the dataset
builder does and draws its joint positions and actions into a PNG (matplotlib).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..spec import Spec
from .bags import BagError, open_bag
from .dataset import (DatasetError, Progress, build_episode, dataset_spec, list_episodes,
                      read_dataset_yaml)


GIVEN_UP = ("discarded", "failed", "unrecoverable")  # statuses whose bags need not be readable


def dataset_info(path) -> dict:
    """Episodes (status, success, seed, duration, error), statuses, success counts, and per
    topic its type, message count and average rate (message intervals per second of the bags
    holding it), for the dataset folder ``path``."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    meta = read_dataset_yaml(root)
    episodes, types = [], {}
    counts, intervals, durations = Counter(), Counter(), Counter()
    entries = list_episodes(root)
    if not entries and meta is None and not (root / "index.json").is_file():
        raise DatasetError(f"{root}: no dataset.yaml, no index.json and no bag: not a dataset "
                           "(the wrong folder?)")
    progress = Progress(len(entries), "reading bags")
    for done, entry in enumerate(entries, 1):
        progress.update(done, entry["name"])
        ep = {k: entry.get(k) for k in ("name", "status", "success", "seed", "task")}
        ep["bag"] = str(entry["bag"])
        if entry["status"] == "discarded" and not Path(entry["bag"]).exists():
            ep["note"] = "bag deleted"
            episodes.append(ep)
            continue
        try:
            with open_bag(entry["bag"]) as bag:
                ep["duration"] = bag.duration
                ep["counts"] = {t: info.count for t, info in bag.topics.items()}
                ep["undecodable"] = dict(bag.undecodable)
                ep["storage"] = bag.storage
                ep["crc"] = bag.checked_chunks
                if entry["status"] is None:  # no index: what the bag's metadata keeps
                    kept = bag.custom_data
                    ep["success"] = {"True": True, "False": False}.get(
                        str(kept.get("robot_imitation.success")))
                    seed = str(kept.get("robot_imitation.seed", ""))
                    ep["seed"] = int(seed) if seed.lstrip("-").isdigit() else None
                for topic, info in bag.topics.items():
                    types.setdefault(topic, info.msgtype)
                    counts[topic] += info.count
                    intervals[topic] += max(info.count - 1, 0)
                    durations[topic] += bag.duration
        except BagError as exc:
            ep["error"] = str(exc)
            ep["unreadable"] = entry["status"] not in GIVEN_UP
        episodes.append(ep)
    progress.close()
    outcomes = Counter({True: "succeeded", False: "failed"}.get(e["success"], "unknown")
                       for e in episodes)
    return {
        "path": str(root),
        "spec": meta["spec"]["name"] if meta else None,
        "episodes": episodes,
        "statuses": dict(Counter(e["status"] or "(no index)" for e in episodes)),
        "success": {k: outcomes[k] for k in ("succeeded", "failed", "unknown")},
        "duration": sum(e.get("duration", 0.0) for e in episodes),
        "unreadable": [e["name"] for e in episodes if e.get("unreadable")],
        "topics": {t: {"type": types[t], "messages": counts[t],
                       "rate": intervals[t] / durations[t] if durations[t] > 0 else None}
                   for t in sorted(types)},
    }


def format_info(info: dict) -> str:
    """``dataset_info`` as text."""
    eps = info["episodes"]
    lines = [f"dataset {info['path']}" + (f" (spec {info['spec']})" if info["spec"] else ""),
             f"episodes: {len(eps)} ("
             + ", ".join(f"{s} {n}" for s, n in sorted(info["statuses"].items())) + ")",
             "success: " + ", ".join(f"{k} {n}" for k, n in info["success"].items()),
             f"duration: {info['duration']:.1f} s in all"]
    durations = [e["duration"] for e in eps if "duration" in e]
    if durations:
        lines[-1] += (f", {min(durations):.1f}..{max(durations):.1f} s per episode "
                      f"(mean {np.mean(durations):.1f} s)")
    crcs = [e["crc"] for e in eps if e.get("crc") is not None]
    if crcs:
        checked, total = sum(c[0] for c in crcs), sum(c[1] for c in crcs)
        lines.append(f"chunk CRCs: checked in {checked} of {total} chunks"
                     + ("" if checked == total else " (a byte changed inside an unchecked chunk "
                        "cannot be detected)"))
    if any(e.get("storage") == "sqlite3" for e in eps):
        lines.append("sqlite3 bags carry no checksums: a byte changed inside a message cannot "
                     "be detected")
    lines.append("topics:")
    width = max((len(t) for t in info["topics"]), default=0)
    for topic, t in info["topics"].items():
        rate = f"{t['rate']:8.1f} Hz" if t["rate"] is not None else "       - Hz"
        lines.append(f"  {topic:<{width}}  {t['messages']:8d} msgs {rate}  {t['type']}")
    lines.append("episodes:")
    for e in eps:
        outcome = {True: "success", False: "failure"}.get(e["success"], "-")
        text = f"  {e['name']}  {e['status'] or '-'}  {outcome}  seed {e['seed']}"
        if "duration" in e:
            text += f"  {e['duration']:.2f} s"
        if e.get("crc") and e["crc"][0] < e["crc"][1]:
            text += f"  (CRCs in {e['crc'][0]} of {e['crc'][1]} chunks)"
        if "note" in e:
            text += f"  ({e['note']})"
        if "error" in e:
            text += f"  UNREADABLE: {e['error']}"
            if e["status"] == "recording":
                text += " (still recording, or the recorder crashed: robot-imitation recover)"
        lines.append(text)
        for topic, why in sorted((e.get("undecodable") or {}).items()):
            lines.append(f"    topic {topic} cannot be decoded: {why}")
    return "\n".join(lines)


def unreadable_summary(info: dict) -> str:
    """"N of M episodes cannot be read: names" ("" when every bag expected to be readable
    is)."""
    bad = info["unreadable"]
    if not bad:
        return ""
    return (f"{len(bad)} of {len(info['episodes'])} episodes cannot be read: "
            + ", ".join(bad))


def plot_episode(path, episode, out_png, spec: Spec | str | None = None) -> dict:
    """Draw the joint positions and actions of ``episode`` (a name or an index in dataset
    order, any status) of the dataset folder ``path`` into ``out_png``.

    Returns the legend: {panel title: [series names]} (series colours follow ``PALETTE``).
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    entries = list_episodes(root)
    if isinstance(episode, int):
        if not 0 <= episode < len(entries):
            raise DatasetError(f"{root}: no episode {episode} (it has {len(entries)})")
        entry = entries[episode]
    else:
        entry = next((e for e in entries if e["name"] == episode), None)
        if entry is None:
            raise DatasetError(f"{root}: no episode {episode!r} (it has "
                               f"{[e['name'] for e in entries]})")
    spec = dataset_spec(root, spec)
    ep = build_episode(entry["bag"], spec, name=entry["name"])

    panels = []
    for f in spec.low_dim_observations:
        if f.field == "position":
            panels.append((f"{f.key} (observation)", ep.obs[f.key], f.names()))
    panels.append(("actions", ep.actions, [n for f in spec.actions for n in f.names()]))
    t = ep.t - ep.t[0]
    title = f"{entry['name']} ({len(ep)} steps, {ep.dropped} dropped)"
    _plot(Path(out_png), title, t, panels)
    return {name: series for name, _, series in panels}


def _plot(out: Path, title: str, t, panels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3 * len(panels)), sharex=True,
                             squeeze=False)
    for ax, (name, values, series) in zip(axes[:, 0], panels):
        for i, label in enumerate(series):
            ax.plot(t, values[:, i], label=label, color=_hex(PALETTE[i % len(PALETTE)]))
        ax.set_title(name)
        ax.legend(fontsize="x-small", ncol=3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)
