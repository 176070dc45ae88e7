"""Inference latency of the generative families on each backend, as the policy node's ``auto``
measures it: act and diffusion on the reach spec, one thread, a batch of one.

Configurations: act and diffusion with their default options at chunks of 8 and 16 (diffusion:
its default 10 DDIM steps, unrolled into one graph on TorchScript and ONNX Runtime), and the
default mlp for reference. Each policy has untrained weights (latency does not depend on their
values) and the statistics of --episodes scripted-expert reach episodes, so the inputs the
selection checks and times lie where a trained policy's do. Each goes through
``select_backend(policy, "auto")`` --rounds times: a round checks every backend against eager
PyTorch and times --calls calls of each. Reported per backend: the median over rounds of its
median latency, its ratio to eager, and how many rounds ``auto`` picked it.

The figures depend on the machine and its load (compare only runs on a quiet machine). Prints
a table and writes bench/results/generative_latency.json; it only measures.

    .venv/bin/python bench/generative_latency.py [--rounds 3] [--calls 300] [--episodes 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch

from benchlib import save_results
from robot_imitation.data.dataset import compute_stats
from robot_imitation.deploy.backends import KINDS, select_backend
from robot_imitation.learning.config import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.rollouts.gym import expert_demonstrations
from robot_imitation.spec import Spec

CONFIGS = [("act", 8), ("act", 16), ("diffusion", 8), ("diffusion", 16), ("mlp", 1)]


def measure(stats: dict, spec: Spec, family: str, chunk: int, rounds: int, calls: int) -> dict:
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig(policy=family, chunk=chunk), stats).eval()
    times = {k: [] for k in KINDS}
    picked, declined = {k: 0 for k in KINDS}, {}
    for _ in range(rounds):
        chosen, rows = select_backend(policy, "auto", threads=1, calls=calls)
        picked[chosen.kind] += 1
        for row in rows:
            if "median_us" in row:
                times[row["backend"]].append(row["median_us"])
            else:
                declined[row["backend"]] = row["error"]
    out = {"family": family, "chunk": chunk, "backends": {}}
    eager = statistics.median(times["eager"])
    for kind in KINDS:
        if times[kind]:
            us = statistics.median(times[kind])
            out["backends"][kind] = {"median_us": us, "over_eager": us / eager,
                                     "rounds_us": times[kind], "picked": picked[kind]}
        else:
            out["backends"][kind] = {"declined": declined.get(kind, "")}
    return out


def report(r: dict) -> str:
    lines = [f"Inference latency, batch of one, one thread ({r['cpus']} CPUs, torch "
             f"{r['torch']}, onnxruntime {r['onnxruntime']}); median over {r['rounds']} "
             f"rounds of select_backend(auto)'s median of {r['calls']} calls; picked: rounds "
             "auto chose it",
             f"  {'policy':20}{'backend':14}{'median us':>11}{'/ eager':>9}{'picked':>8}"]
    for m in r["results"]:
        label = f"{m['family']} chunk {m['chunk']}"
        for kind, row in m["backends"].items():
            if "median_us" in row:
                lines.append(f"  {label:20}{kind:14}{row['median_us']:11.1f}"
                             f"{row['over_eager']:9.2f}{row['picked']:8d}")
        declined = [k for k, row in m["backends"].items() if "declined" in row]
        if declined:
            lines.append(f"  {label:20}declined: {', '.join(declined)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=3,
                        help="scripted reach episodes whose statistics the policies take")
    args = parser.parse_args()
    for name in ("rounds", "calls", "episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    import onnxruntime

    torch.set_num_threads(1)  # as the policy node runs them (its `threads` parameter)
    spec = Spec.load("reach")
    stats = compute_stats(spec, expert_demonstrations("reach", range(args.episodes), spec))
    results = []
    for family, chunk in CONFIGS:
        results.append(measure(stats, spec, family, chunk, args.rounds, args.calls))
        print(f"[bench] {family} chunk {chunk} measured", flush=True)
    r = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
         "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
         "rounds": args.rounds, "calls": args.calls, "results": results}
    print()
    print(report(r))
    save_results("generative_latency", r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
