"""How long loading a checkpoint holds up a control loop in the same process: the ONNX export in
this process (the baseline) against the export in a child process (``apart``: what the policy
node's reload does, ``deploy/export.py``).

A thread ticks at ``--rate``: it sleeps until each period's deadline and records how late it woke
(as a control loop's timer would); the main thread meanwhile loads the checkpoint with
``load_policy(path, spec, backend, apart=...)`` (``--backend``, onnxruntime by default; ``auto``:
a reload that chooses its backend anew), in the same process as the ticks, as the node's reload
worker does. Per family and round (the two ways alternate, after one load that
imports and warms everything): the largest lateness, the ticks that woke more than a period
late (missed), the load's seconds. The ratio is here / apart of the largest lateness. No ROS:
the stall is Python's interpreter lock, held by ``torch.onnx.export``'s graph passes.

    .venv/bin/python bench/reload_stall.py [--families diffusion,act,mlp-camera] [--rounds 3]
                                           [--rate 500] [--backend onnxruntime]

The checkpoints are untrained random weights of each family's default architecture (mlp-camera:
an mlp on ``push_image``, its camera encoder a graph of its own). Prints a table, writes
bench/results/reload_stall.json. It only measures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import positive, save_results, steal_seconds  # noqa: E402

FAMILIES = {"diffusion": ("diffusion", "reach", {}),
            "act": ("act", "reach", {}),
            "mlp-camera": ("mlp", "push_image", {})}
AFTER_S = 0.3   # ticks measured after the load ends


def checkpoint(name: str, folder: Path):
    import torch

    from robot_imitation.learning.checkpoint import save_checkpoint
    from robot_imitation.learning.trainer import TrainConfig
    from robot_imitation.policies import make_policy
    from robot_imitation.spec import Spec

    family, spec_name, settings = FAMILIES[name]
    spec = Spec.load(spec_name)
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig(policy=family, task=spec_name, **settings))
    return save_checkpoint(folder / name, policy.eval(), spec), spec


class Ticker:
    """A thread waking at each period's deadline; ``lateness`` (s) of every wake-up."""

    def __init__(self, rate: float):
        self.period = 1.0 / rate
        self.lateness: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.perf_counter()
        while not self._stop.is_set():
            deadline += self.period
            now = time.perf_counter()
            if deadline > now:
                time.sleep(deadline - now)
            late = time.perf_counter() - deadline
            self.lateness.append(late)
            if late > self.period:   # missed: the next deadline from now on
                deadline += self.period * int(late / self.period)

    def stop(self) -> np.ndarray:
        self._stop.set()
        self._thread.join()
        return np.array(self.lateness)


def measure(path, spec, apart: bool, rate: float, backend: str) -> dict:
    from robot_imitation.deploy.runtime import load_policy

    ticker = Ticker(rate)
    time.sleep(0.2)
    t0 = time.perf_counter()
    loaded = load_policy(path, spec, backend, apart=apart)
    seconds = time.perf_counter() - t0
    time.sleep(AFTER_S)
    late = ticker.stop()
    period = 1.0 / rate
    return {"apart": apart, "load_s": seconds, "backend": loaded.backend.kind,
            "note": loaded.backend.note,
            "max_late_ms": float(late.max() * 1e3), "p99_late_ms": float(
                np.percentile(late, 99) * 1e3), "missed": int((late > period).sum()),
            "ticks": int(late.size)}


def run(args) -> dict:
    from robot_imitation.deploy.runtime import load_policy

    results = {"rate": args.rate, "rounds": args.rounds, "backend": args.backend,
               "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "families": {}}
    load0, steal0 = os.getloadavg()[0], steal_seconds()
    with tempfile.TemporaryDirectory(prefix="reload_stall-") as tmp:
        for name in args.families:
            path, spec = checkpoint(name, Path(tmp))
            load_policy(path, spec, args.backend)   # imports, first-call costs: not measured
            rows = []
            for i in range(args.rounds):
                for apart in ((False, True) if i % 2 == 0 else (True, False)):
                    rows.append(measure(path, spec, apart, args.rate, args.backend))
                    print(f"[bench] {name} {'apart' if apart else 'here '}: "
                          f"largest lateness {rows[-1]['max_late_ms']:7.1f} ms, "
                          f"{rows[-1]['missed']:3d} missed, load {rows[-1]['load_s']:.2f} s, "
                          f"backend {rows[-1]['backend']}", flush=True)
            here = [r["max_late_ms"] for r in rows if not r["apart"]]
            apart = [r["max_late_ms"] for r in rows if r["apart"]]
            results["families"][name] = {"rows": rows, "ratio_max_late": float(
                np.median(here) / np.median(apart))}
    results["loadavg_1min"] = [load0, os.getloadavg()[0]]
    results["steal_s"] = steal_seconds() - steal0
    return results


def report(r: dict) -> str:
    lines = [f"A checkpoint load (backend {r['backend']}) beside a {r['rate']:g} Hz ticking "
             f"thread, here / apart (a reload's way: ONNX exported in a child process) "
             f"({r['rounds']} rounds each, {r['cpus']} CPUs, load average "
             f"{r['loadavg_1min'][0]:.2f} -> {r['loadavg_1min'][1]:.2f}, steal "
             f"{r['steal_s']:.1f} s)",
             "  family      export  largest lateness ms (median, max)  missed ticks (median)"
             "  load s (median)"]
    for name, f in r["families"].items():
        for apart in (False, True):
            rows = [x for x in f["rows"] if x["apart"] == apart]
            late = [x["max_late_ms"] for x in rows]
            lines.append(f"  {name:10s}  {'apart' if apart else 'here':6s}  "
                         f"{np.median(late):16.1f} {max(late):8.1f}  "
                         f"{np.median([x['missed'] for x in rows]):26.0f}  "
                         f"{np.median([x['load_s'] for x in rows]):15.2f}")
        lines.append(f"  {name:10s}  here / apart, largest lateness: "
                     f"{f['ratio_max_late']:.1f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES),
                        type=lambda s: [x for x in s.split(",") if x],
                        help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--rounds", type=int, default=3, help="loads each way, per family")
    parser.add_argument("--rate", type=positive, default=500.0, help="the ticking thread's Hz")
    parser.add_argument("--backend", default="onnxruntime",
                        choices=("auto", "onnxruntime", "torchscript", "eager"),
                        help="the backend loaded (auto: chosen by measurement)")
    args = parser.parse_args()
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown or not args.families or args.rounds < 1:
        parser.error(f"families of {', '.join(FAMILIES)}, rounds >= 1 (got {args.families}, "
                     f"{args.rounds})")
    results = run(args)
    print()
    print(report(results))
    save_results("reload_stall", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
