"""DAgger against BC on the contact task: success rate against the number of expert labels.

For each seed: the BC curve (more expert demonstrations each point) and the DAgger curves (from
the smallest BC point, iterations of beta-mixture or gated rollouts labelled by the expert),
both with the library's trainer and the task's scripted expert, evaluated on the same fixed
episodes. The DAgger curves are the algorithm the ROS pipeline runs (``algorithms.dagger``), in
the gymnasium world; every policy commands through the policy node's controller (its action
limits included). The
baseline of the ratio is BC measured in the same run: the labels BC needs to reach 90% of the
expert's success, over the labels DAgger needs.

    .venv/bin/python bench/dagger_curve.py                  # push, seeds 0 1 2
    .venv/bin/python bench/dagger_curve.py --seeds 0 --iterations 3 --eval-episodes 10
    .venv/bin/python bench/dagger_curve.py --jobs 3 --device cuda   # seeds side by side

Writes bench/results/dagger_curve.json and dagger_curve.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from robot_imitation.learning.dagger_sim import (VARIANTS, SimDaggerConfig,  # noqa: E402
                                                 bc_and_dagger, expert_success,
                                                 labels_to_reach)

NAMES = {"mixture": "DAgger", "gated": "HG-DAgger"}


def mean_curve(runs: list, key: str, x: str) -> list:
    """Per curve point (same index in every seed): mean labels and mean/min/max success."""
    points = []
    for rows in zip(*[r[key] for r in runs]):
        s = [r["success"] for r in rows]
        points.append({x: rows[0][x], "labels": float(np.mean([r["labels"] for r in rows])),
                       "success": float(np.mean(s)), "min": min(s), "max": max(s)})
    return points


def plot(curves: dict, expert: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        xs = [p["labels"] for p in pts]
        ax.plot(xs, [p["success"] for p in pts], marker="o", label=name)
        ax.fill_between(xs, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.2)
    ax.axhline(expert, color="k", ls="--", lw=1, label="expert")
    ax.axhline(0.9 * expert, color="k", ls=":", lw=1, label="90% of expert")
    ax.set_xlabel("expert-labelled steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def one_seed(cfg: SimDaggerConfig, out: Path, threads: int) -> dict:
    """``bc_and_dagger`` for one seed (in a worker process when seeds run side by side)."""
    import torch

    torch.set_num_threads(threads)
    return bc_and_dagger(cfg, out, log=lambda m: print(m, flush=True))


def main() -> int:
    d = SimDaggerConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="push")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--bc-demos", type=int, nargs="+", default=[10, 20, 40, 80, 160])
    ap.add_argument("--dagger-start", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--episodes-per-iteration", type=int, default=5)
    ap.add_argument("--beta0", type=float, default=d.beta0, help="beta of DAgger iteration 1")
    ap.add_argument("--decay", type=float, default=d.decay, help="beta_i = beta0 * decay**(i-1)")
    ap.add_argument("--stall-steps", type=int, default=d.stall_steps,
                    help="gated: the expert takes over once the end effector is stuck this many "
                         "steps")
    ap.add_argument("--stall-distance", type=float, default=d.stall_distance,
                    help="gated: end-effector motion (m) under which it counts as stuck")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="mixture: DAgger (beta-mixture rollouts, every state labelled); gated: "
                         "HG-DAgger (the policy drives, a scripted gate hands control to the "
                         "expert when the arm is stuck or pushes backwards; only "
                         "expert-driven states are labelled)")
    ap.add_argument("--hold", type=int, default=d.hold,
                    help="gated: ticks the expert keeps control per intervention")
    ap.add_argument("--patience", type=int, default=d.patience,
                    help="gated: ticks without 1 cm of progress of the object before the expert "
                         "takes over (0: never)")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--steps", type=int, default=6000, help="training steps per fit")
    ap.add_argument("--device", default="cpu", help="training device: cpu, cuda or auto")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run side by side (processes)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="summarize the runs of an earlier dagger_curve.json again (no training)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        summarize(json.loads(args.report.read_text()), args.out)
        return 0
    t0 = time.monotonic()
    base = SimDaggerConfig(task=args.task, bc_demos=args.bc_demos, dagger_start=args.dagger_start,
                           iterations=args.iterations,
                           episodes_per_iteration=args.episodes_per_iteration,
                           beta0=args.beta0, decay=args.decay, stall_steps=args.stall_steps,
                           stall_distance=args.stall_distance, eval_episodes=args.eval_episodes,
                           variants=args.variants, hold=args.hold, patience=args.patience,
                           train={"steps": args.steps, "eval_every": 0, "eval_episodes": 0,
                                  "device": args.device, "val_fraction": 0.0})
    expert = expert_success(base)
    print(f"expert: {expert:.2f} over {args.eval_episodes} episodes", flush=True)
    jobs = max(1, min(args.jobs, len(args.seeds)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    work = [(SimDaggerConfig(**{**asdict(base), "seed": seed}),
             args.out / "dagger_curve_runs" / f"seed_{seed}", threads) for seed in args.seeds]
    if jobs == 1:
        runs = [one_seed(*w) for w in work]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(one_seed, *zip(*work)))
    result = {"task": args.task, "seeds": args.seeds, "expert_success": expert, "runs": runs,
              "config": asdict(base),
              "wall_s": round(time.monotonic() - t0, 1)}
    summarize(result, args.out)
    return 0


def summarize(result: dict, out: Path) -> dict:
    """Mean curves, labels to 90% of the expert and the ratios; prints the table, writes
    dagger_curve.json and dagger_curve.png into ``out``."""
    runs, expert, cfg = result["runs"], result["expert_success"], result["config"]
    curves = {"BC": mean_curve(runs, "bc", "demos")}
    for variant in cfg["variants"]:
        curves[NAMES[variant]] = mean_curve(runs, VARIANTS[variant], "iteration")
    goal = 0.9 * expert
    need = {name: labels_to_reach(pts, goal) for name, pts in curves.items()}
    bc_most = max(p["labels"] for p in curves["BC"])
    ratios = {}
    for name, n in need.items():
        if name == "BC":
            continue
        if not n:
            ratios[name] = None
        elif need["BC"]:
            ratios[name] = {"ratio": need["BC"] / n}
        else:  # BC never got there: its largest point bounds the ratio from below
            ratios[name] = {"at_least": bc_most / n}

    print(f"\n{result['task']}, {len(result['seeds'])} seeds, {cfg['eval_episodes']} evaluation "
          f"episodes, {cfg['train']['steps']} training steps per fit on {cfg['train']['device']}")
    print(f"{'method':<10}{'point':>6}{'labels':>10}{'success':>10}{'min':>7}{'max':>7}")
    for name, pts in curves.items():
        for p in pts:
            point = p.get("demos", p.get("iteration"))
            print(f"{name:<10}{point:>6}{p['labels']:>10.0f}{p['success']:>10.2f}"
                  f"{p['min']:>7.2f}{p['max']:>7.2f}")
    for name, n in need.items():
        best = max(p["success"] for p in curves[name])
        print(f"{name}: labels to reach 90% of the expert ({goal:.2f}): "
              + (f"{n:.0f}" if n else f"not reached (best {best:.2f})"))
    for name, r in ratios.items():
        text = ("n/a (it did not reach it)" if r is None else
                f"{r['ratio']:.2f}x (goal: >= 3x)" if "ratio" in r else
                f"> {r['at_least']:.2f}x (BC did not reach it within {bc_most:.0f} labels; "
                "goal: >= 3x)")
        print(f"label ratio BC / {name} at 90% of the expert: {text}")
    result.update(goal=goal, curves=curves, labels_to_goal=need, label_ratios=ratios)
    (out / "dagger_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(curves, expert, out / "dagger_curve.png")
    print(f"wrote {out / 'dagger_curve.json'} and dagger_curve.png ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
