"""LeRobotDataset v3.0 export and import throughput, against reading the same bags with rosbags.

One run:
1. records a dataset (bridge, scripted expert and recorder as processes, lockstep) of
   ``--episodes`` (100) ``push`` episodes with the camera spec ``push_image`` (320x240 frames
   from the bridge, 96x96 in the spec), unless ``--dataset`` names an existing one;
2. baseline: reads every message of the bags with plain ``rosbags`` (AnyReader, each message
   deserialized), as ``dataset_build.py`` does;
3. exports the dataset (no builder cache: every bag decoded, aligned, the frames encoded as
   H.264 and written to Parquet), then imports the export back into bags.

Prints frames per second and MB per second (of bags read, of bags written) for each, the ratio
export / plain read against the goal (<= 1.5x), and the machine's load; writes
bench/results/lerobot_convert.json.

    .venv/bin/python bench/lerobot_convert.py [--episodes 100] [--dataset DIR] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
RESULTS_DIR = HERE / "results"
GOAL = 1.5

from dataset_build import bag_bytes, plain_read  # noqa: E402 - after the path set-up


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--dataset", help="use this dataset instead of recording one")
    parser.add_argument("--keep", help="record into this folder and keep it (for --dataset)")
    parser.add_argument("--codec", choices=("h264", "av1"), default="h264")
    args = parser.parse_args()

    from robot_imitation.data.lerobot import export_lerobot, import_lerobot

    # the libraries each side uses, imported before the clocks start (not conversion work)
    import av  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import rosbags.highlevel  # noqa: F401

    tmp = Path(tempfile.mkdtemp(prefix="lerobot-bench-"))
    try:
        if args.dataset:
            root = Path(args.dataset)
        else:
            from robot_imitation.ros.pipelines import record_demonstrations

            root = Path(args.keep) if args.keep else tmp / "ds"
            start = time.perf_counter()
            print(f"[bench] recording {args.episodes} push episodes with spec push_image ...",
                  flush=True)
            record_demonstrations(root, task="push", spec="push_image", episodes=args.episodes,
                                  mode="lockstep", log_dir=tmp / "logs")
            print(f"[bench] recorded in {time.perf_counter() - start:.1f} s", flush=True)
        load_before = os.getloadavg()
        size = bag_bytes(root)
        read_s, messages = plain_read(root)
        start = time.perf_counter()
        exported = export_lerobot(root, tmp / "lerobot", codec=args.codec, cache=False)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        imported = import_lerobot(tmp / "lerobot", exported_spec(root), tmp / "back")
        import_s = time.perf_counter() - start
        load_after = os.getloadavg()
        frames = exported.frames
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_1min_before": load_before[0], "load_1min_after": load_after[0]},
            "episodes": exported.episodes, "frames": frames, "messages": messages,
            "bag_bytes": size, "lerobot_bytes": folder_bytes(tmp / "lerobot"),
            "imported_bag_bytes": bag_bytes(tmp / "back"), "codec": args.codec,
            "plain_read_s": read_s, "export_s": export_s, "import_s": import_s,
            "export_over_plain_read": export_s / read_s, "goal": GOAL,
            "imported_frames": imported.frames,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    r = results
    mb = r["bag_bytes"] / 1e6
    print(f"\nLeRobot conversion: {r['episodes']} episodes, {r['frames']} frames, "
          f"{r['messages']} messages, {mb:.1f} MB of bags -> {r['lerobot_bytes'] / 1e6:.1f} MB "
          f"LeRobot ({r['codec']}) -> {r['imported_bag_bytes'] / 1e6:.1f} MB of bags")
    print(f"  {'':44s} {'seconds':>9s} {'frames/s':>10s} {'MB/s':>8s}")
    rows = (("plain rosbags read (deserialize all)", r["plain_read_s"], mb),
            ("export (decode, align, encode, Parquet)", r["export_s"], mb),
            ("import (decode video, write bags)", r["import_s"], r["imported_bag_bytes"] / 1e6))
    for label, s, size_mb in rows:
        print(f"  {label:44s} {s:9.2f} {r['frames'] / s:10.0f} {size_mb / s:8.1f}")
    ok = r["export_over_plain_read"] <= GOAL
    print(f"  export / plain read: {r['export_over_plain_read']:.2f} (goal <= {GOAL}: "
          f"{'met' if ok else 'NOT met'}); load (1 min) {r['machine']['load_1min_before']:.2f}"
          f" before, {r['machine']['load_1min_after']:.2f} after, {r['machine']['cpus']} CPUs")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "lerobot_convert.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"[bench] results in {out.relative_to(HERE.parent)}")
    return 0


def exported_spec(root: Path):
    from robot_imitation.data.dataset import dataset_spec

    return dataset_spec(root)


if __name__ == "__main__":
    raise SystemExit(main())
