"""What a dataset holds (``robot-imitation info``) and a picture of one episode (``plot``).

``dataset_info`` reads the index and each bag's summary (no message is decoded);
``format_info`` renders it for a terminal. ``plot_episode`` aligns one episode as the dataset
builder does and draws its joint positions and actions into a PNG: with matplotlib when it is
installed, else with the small raster plotter below (no labels drawn; the legend goes into the
PNG's text chunks and is returned).
"""
from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from ..spec import Spec
from .bags import BagError, open_bag
from .dataset import (DatasetError, build_episode, dataset_spec, list_episodes,
                      read_dataset_yaml)


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
    for entry in list_episodes(root):
        ep = {k: entry.get(k) for k in ("name", "status", "success", "seed", "task")}
        ep["bag"] = str(entry["bag"])
        try:
            with open_bag(entry["bag"]) as bag:
                ep["duration"] = bag.duration
                ep["counts"] = {t: info.count for t, info in bag.topics.items()}
                for topic, info in bag.topics.items():
                    types.setdefault(topic, info.msgtype)
                    counts[topic] += info.count
                    intervals[topic] += max(info.count - 1, 0)
                    durations[topic] += bag.duration
        except BagError as exc:
            ep["error"] = str(exc)
        episodes.append(ep)
    outcomes = Counter({True: "succeeded", False: "failed"}.get(e["success"], "unknown")
                       for e in episodes)
    return {
        "path": str(root),
        "spec": meta["spec"]["name"] if meta else None,
        "episodes": episodes,
        "statuses": dict(Counter(e["status"] or "(no index)" for e in episodes)),
        "success": {k: outcomes[k] for k in ("succeeded", "failed", "unknown")},
        "duration": sum(e.get("duration", 0.0) for e in episodes),
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
        if "error" in e:
            text += f"  UNREADABLE: {e['error']}"
        lines.append(text)
    return "\n".join(lines)


def plot_episode(path, episode, out_png, spec: Spec | str | None = None) -> dict:
    """Draw the joint positions and actions of ``episode`` (a name or an index in dataset
    order, any status) of the dataset folder ``path`` into ``out_png``.

    Returns the legend: {panel title: [series names]} (series colours follow ``PALETTE``).
    """
    root = Path(path)
    entries = list_episodes(root) if root.is_dir() else []
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
    try:
        import matplotlib
    except ImportError:
        _plot_png(Path(out_png), title, t, panels)
    else:
        matplotlib.use("Agg")
        _plot_matplotlib(Path(out_png), title, t, panels)
    return {name: series for name, _, series in panels}


def _plot_matplotlib(out: Path, title: str, t, panels) -> None:
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


# ===================================================================== a minimal PNG plotter
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PANEL_SIZE = (900, 260)   # width, height in pixels
MARGIN = 12


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def _plot_png(out: Path, title: str, t, panels) -> None:
    """Each panel: a frame, the zero line when in range, one polyline per series."""
    w, h = PANEL_SIZE
    img = np.full((h * len(panels), w, 3), 255, np.uint8)
    for p, (_, values, _) in enumerate(panels):
        top, bottom, left, right = p * h + MARGIN, (p + 1) * h - MARGIN, MARGIN, w - MARGIN
        img[[top, bottom], left:right + 1] = 0
        img[top:bottom + 1, [left, right]] = 0
        lo, hi = float(values.min()), float(values.max())
        pad = 0.05 * (hi - lo) or 1.0
        lo, hi = lo - pad, hi + pad
        x = left + (t - t[0]) / max(t[-1] - t[0], 1e-9) * (right - left)
        rows = bottom - (values - lo) / (hi - lo) * (bottom - top)
        if lo < 0 < hi:
            img[int(round(bottom + lo / (hi - lo) * (bottom - top))), left:right:4] = 160
        for i in range(values.shape[1]):
            _polyline(img, x, rows[:, i], PALETTE[i % len(PALETTE)])
    legend = "; ".join(f"{name}: " + ", ".join(f"{_hex(PALETTE[i % len(PALETTE)])} {s}"
                                               for i, s in enumerate(series))
                       for name, _, series in panels)
    _write_png(out, img, {"Title": title, "Description": legend})


def _polyline(img: np.ndarray, x: np.ndarray, y: np.ndarray, color) -> None:
    """Straight segments between consecutive points, sampled one pixel apart."""
    for x0, y0, x1, y1 in zip(x[:-1], y[:-1], x[1:], y[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
        cols = np.rint(np.linspace(x0, x1, n)).astype(int)
        rows = np.rint(np.linspace(y0, y1, n)).astype(int)
        img[rows, cols] = color
    if len(x) == 1:
        img[int(round(y[0])), int(round(x[0]))] = color


def _write_png(out: Path, rgb: np.ndarray, text: dict) -> None:
    """An 8-bit RGB PNG: signature, IHDR, tEXt chunks, one IDAT (zlib, filter 0), IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)
    out.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + b"".join(chunk(b"tEXt", k.encode("latin-1") + b"\0"
                         + v.encode("latin-1", "replace")) for k, v in text.items())
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b""))
