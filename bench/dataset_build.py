"""Dataset build speed: bags -> aligned training arrays, per GB, against plain ``rosbags`` reading.

One run:
1. records a dataset (bridge, scripted expert and recorder as processes, lockstep) with the
   camera spec ``push_image`` (320x240 frames from the bridge, decoded to 96x96), unless
   ``--dataset`` names an existing one;
2. baseline: reads every message of the same bags with plain ``rosbags`` (AnyReader, each
   message deserialized);
3. builds the dataset without cache (decode, align, resize images), then again from the cache.

Prints seconds per GB of bags for each, and the ratio build / plain read. Results go to
bench/results/dataset_build.json.

    .venv/bin/python bench/dataset_build.py [--episodes 20] [--dataset DIR] [--spec push_image]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def bag_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("episode_*/*") if p.suffix in (".mcap", ".db3"))


def plain_read(root: Path) -> tuple[float, int]:
    """Seconds to deserialize every message of every bag with rosbags alone; messages read."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    bags = sorted(p for p in root.glob("episode_*") if (p / "metadata.yaml").is_file())
    start = time.perf_counter()
    n = 0
    for bag in bags:
        with AnyReader([bag], default_typestore=store) as reader:
            for conn, _, raw in reader.messages():
                reader.deserialize(raw, conn.msgtype)
                n += 1
    return time.perf_counter() - start, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--spec", default="push_image")
    parser.add_argument("--dataset", help="use this dataset instead of recording one")
    args = parser.parse_args()

    from robot_imitation.data.dataset import build_dataset
    from robot_imitation.ros.pipelines import record_demonstrations

    tmp = None
    if args.dataset:
        root = Path(args.dataset)
    else:
        tmp = tempfile.mkdtemp(prefix="dataset-bench-")
        root = Path(tmp) / "ds"
        start = time.perf_counter()
        print(f"[bench] recording {args.episodes} episodes with spec {args.spec} ...", flush=True)
        record_demonstrations(root, task="push", spec=args.spec, episodes=args.episodes,
                              mode="lockstep", log_dir=Path(tmp) / "logs")
        print(f"[bench] recorded in {time.perf_counter() - start:.1f} s", flush=True)
    try:
        size = bag_bytes(root)
        gb = size / 1e9
        read_s, n_msgs = plain_read(root)
        cache_dir = Path(tempfile.mkdtemp(prefix="dataset-cache-"))
        start = time.perf_counter()
        dataset = build_dataset(root, cache=True, cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        again = build_dataset(root, cache=True, cache_dir=cache_dir)
        cached_s = time.perf_counter() - start
        shutil.rmtree(cache_dir, ignore_errors=True)
        steps = sum(len(e) for e in dataset.episodes)
        assert not again.decoded, "the second build decoded bags: the cache did not hit"
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "spec": dataset.spec.name, "episodes": len(dataset.episodes), "steps": steps,
            "bag_bytes": size, "messages": n_msgs,
            "plain_rosbags_read_s": read_s, "build_s": build_s, "cached_build_s": cached_s,
            "plain_read_s_per_gb": read_s / gb, "build_s_per_gb": build_s / gb,
            "cached_build_s_per_gb": cached_s / gb, "build_over_plain_read": build_s / read_s,
        }
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    r = results
    print(f"\nDataset build, spec {r['spec']}: {r['episodes']} episodes, {r['steps']} steps, "
          f"{r['messages']} messages, {r['bag_bytes'] / 1e6:.1f} MB of bags")
    print(f"  {'':40s} {'seconds':>9s} {'s per GB':>10s} {'MB/s':>8s}")
    for label, key in (("plain rosbags read (deserialize all)", "plain_rosbags_read_s"),
                       ("build (decode, align, resize, cache)", "build_s"),
                       ("build again (from the cache)", "cached_build_s")):
        s = r[key]
        print(f"  {label:40s} {s:9.2f} {s / (r['bag_bytes'] / 1e9):10.1f} "
              f"{r['bag_bytes'] / 1e6 / s:8.1f}")
    print(f"  build / plain read: {r['build_over_plain_read']:.2f}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "dataset_build.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"[bench] results in {out.relative_to(RESULTS_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
