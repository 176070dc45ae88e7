"""Generative action models against the MLP on a task whose demonstrations are multimodal.

For each task, seed and number of demonstrations: the same scripted-expert episodes (the
first N of one seeded set, so 50 is inside 100 is inside 200) train each policy with the
library's trainer: ``mlp`` with the mean-squared-error head, ``mlp`` with the Gaussian-mixture
head, ``act`` and ``diffusion`` (their defaults: chunks of 8, executed by the policy node's
controller as the family declares, ``chunk_mode auto``). Each is evaluated in closed loop on the
same fixed episodes, commanding through the policy node's controller (chunk execution, action
limits) in the gymnasium world. The baseline of the ratios is the expert's success on the same
episodes, measured in the same run.

Also measured per policy (the largest demonstration set of the first seed, on the first task):
training time (on the CPU its CPU time: with ``--threads 1`` the time on one core, unaffected
by other work on the machine; on a GPU the wall time); inference time per chunk (the
controller's worker); and the control thread's time per tick when ticks come at the control
rate in real time (``late_chunk hold``, as on a robot), with the ticks where no action was
ready.

Goal (issue): on the multimodal task, act and diffusion reach >= 90% of the expert's success
where mlp-mse stays under half of it; on push they are at least as good as mlp.

    .venv/bin/python bench/generative.py                          # both tasks, 3 seeds, 50/100/200
    .venv/bin/python bench/generative.py --tasks push_obstacle --seeds 0 --demos 50
    .venv/bin/python bench/generative.py --report bench/results/generative.json   # table again

Parts of the grid can run apart (--seeds, --tasks and their own --out: on two cores, two
workers of one thread each) and be reported together: --report A/generative.json
B/generative.json ... merges them. --timing-only JSON measures the per-policy timing again,
on a quiet machine, into generative_timing.json, which --report then uses.

A run stopped part-way is taken up again by the same command: generative.json is rewritten
after every cell and the cells found there are not trained again (--fresh: all of them).

Writes bench/results/generative.json and generative.png (success against demonstrations),
and with --videos a rollout video per policy on the first task (docs/generative/).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

# name: (policy type, policy options, training settings)
POLICIES = {
    "mlp-mse": ("mlp", {}, {"head": "mse", "steps": 4000}),
    "mlp-gmm": ("mlp", {}, {"head": "gmm", "steps": 4000}),
    "act": ("act", {}, {"steps": 6000, "batch_size": 128}),  # 3000: too few on push_obstacle
    # on push_obstacle (100 demonstrations) the U-Net took 12,000 steps at 1e-3 (47/50): 4,000
    # gave 1/30, 6,000 at the family's default 3e-3 (made for runs of minutes) 43/50
    "diffusion": ("diffusion", {}, {"steps": 12000, "batch_size": 128, "lr": 1e-3}),
}
DEMO_SEED = 2_000_000  # demonstrations: DEMO_SEED * (seed + 1) + k; evaluation: EVAL_SEED + k


def demonstrations(task: str, seed: int, n: int) -> list:
    from robot_imitation.rollouts.gym import expert_demonstrations

    base = DEMO_SEED * (seed + 1)
    return expert_demonstrations(task, range(base, base + n))


def fit(task: str, name: str, episodes: list, seed: int, out: Path, device: str) -> dict:
    """Train policy ``name`` on ``episodes``: the checkpoint and the training time."""
    from robot_imitation.learning.trainer import TrainConfig, train
    from robot_imitation.rollouts.gym import episodes_dataset
    from robot_imitation.spec import Spec

    family, options, settings = POLICIES[name]
    cfg = TrainConfig(policy=family, policy_config=dict(options), task=task, seed=seed,
                      device=device, eval_every=0, eval_episodes=0, val_fraction=0.0,
                      log_every=500, **settings)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(episodes_dataset(episodes, Spec.load(task), cfg), out, cfg,
                   log=lambda *a, **k: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # on the CPU, the training's CPU time (with --threads 1, its time on one core whatever
    # else the machine runs, or if the run is paused); on a GPU, the wall time
    return {"checkpoint": result["last"], "train_s": wall if device != "cpu" else cpu,
            "train_wall_s": wall, "samples": sum(len(e) for e in episodes)}


def evaluate(task: str, checkpoint: str | None, episodes: int) -> dict:
    """Closed-loop success on the fixed evaluation episodes (None: the scripted expert)."""
    from robot_imitation.deploy.runtime import load_policy, make_controller
    from robot_imitation.rollouts.base import EVAL_SEED, ExpertDriver, PolicyDriver, summarize
    from robot_imitation.rollouts.gym import GymWorld
    from robot_imitation.sim.experts import make_expert
    from robot_imitation.spec import Spec

    world = GymWorld(task, Spec.load(task))
    try:
        if checkpoint is None:
            driver, controller = ExpertDriver(make_expert(world.sim)), None
        else:
            loaded = load_policy(checkpoint, world.spec, "eager", threads=1)
            controller, _ = make_controller(loaded, world.spec)
            driver = PolicyDriver(controller)
        summary = summarize(world.run(range(EVAL_SEED, EVAL_SEED + episodes), driver))
        row = {"success": summary["success_rate"], "successes": summary["successes"],
               "episodes": summary["episodes"], "mean_length": summary["mean_length"]}
        if controller is not None:
            controller.close()
        return row
    finally:
        world.close()


def realtime_ticks(task: str, checkpoint: str, ticks: int = 200) -> dict:
    """The control thread at the control rate in real time, as the policy node runs on a robot
    (``late_chunk hold``): the observations of an expert episode fed one per control period;
    per-tick time (p50/p99/max, ms), per-chunk inference time and ticks with no action ready."""
    from robot_imitation.deploy.runtime import load_policy, make_controller
    from robot_imitation.spec import Spec

    spec = Spec.load(task)
    episode = demonstrations(task, 99, 1)[0]
    loaded = load_policy(checkpoint, spec, "auto", threads=1)
    controller, _ = make_controller(loaded, spec, late_chunk="hold")
    period = 1.0 / spec.control_rate
    obs = [{k: v[i % len(episode)].astype(np.float64) for k, v in episode.obs.items()}
           for i in range(ticks)]
    times = np.empty(ticks)
    start = time.perf_counter()
    for i, o in enumerate(obs):
        t = time.perf_counter()
        controller.tick(o)
        times[i] = time.perf_counter() - t
        time.sleep(max(0.0, start + (i + 1) * period - time.perf_counter()))
    timing = controller.timing()
    c = controller.counters
    controller.close()
    return {"backend": loaded.backend.kind, "tick_p50_ms": float(np.median(times) * 1e3),
            "tick_p99_ms": float(np.percentile(times, 99) * 1e3),
            "tick_max_ms": float(times.max() * 1e3), "chunks": c.chunks,
            "chunk_p50_ms": timing.get("p50_ms"), "chunk_p99_ms": timing.get("p99_ms"),
            "no_action_ticks": c.no_action_ticks, "ticks": ticks}


def cell_key(row: dict) -> tuple:
    return (row["task"], row["seed"], row["demos"], row["policy"])


def run(args) -> dict:
    """Every cell of the grid, seed by seed (so a partial run already covers every task and
    demonstration count). The JSON is rewritten after each cell; a run started again with the
    same --out keeps the cells it finds there and trains only the missing ones (--fresh: all)."""
    import torch

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    path = args.out / "generative.json"
    result = {"tasks": args.tasks, "seeds": args.seeds, "demos": args.demos,
              "policies": args.policies, "eval_episodes": args.eval_episodes,
              "device": args.device, "runs": [], "expert": {}, "timing": {}, "wall_s": 0.0}
    if path.exists() and not args.fresh:
        earlier = json.loads(path.read_text())
        if earlier.get("eval_episodes") != args.eval_episodes:
            raise SystemExit(f"error: {path} was measured with eval_episodes "
                             f"{earlier.get('eval_episodes')}, not {args.eval_episodes}; "
                             "use --fresh or another --out")
        grid = {(t, s, n, p) for t in args.tasks for s in args.seeds for n in args.demos
                for p in args.policies}
        result["runs"] = [r for r in earlier.get("runs", []) if cell_key(r) in grid]
        result["expert"] = {t: e for t, e in earlier.get("expert", {}).items() if t in args.tasks}
        result["timing"] = {p: t for p, t in earlier.get("timing", {}).items()
                            if p in args.policies}
        result["wall_s"] = float(earlier.get("wall_s", 0.0))
        print(f"resuming {path}: {len(result['runs'])} of {len(grid)} cells done", flush=True)
    done = {cell_key(r) for r in result["runs"]}
    t0 = time.monotonic()
    wall0 = result["wall_s"]

    def save() -> None:
        result["wall_s"] = round(wall0 + time.monotonic() - t0, 1)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)

    for task in args.tasks:
        if task not in result["expert"]:
            result["expert"][task] = evaluate(task, None, args.eval_episodes)
            save()
        print(f"{task}: expert {result['expert'][task]['success']:.2f}", flush=True)
    first = (args.tasks[0], args.seeds[0], max(args.demos))
    for seed in args.seeds:
        for task in args.tasks:
            pool = None
            for n in args.demos:
                for name in args.policies:
                    timing = (task, seed, n) == first and (
                        name not in result["timing"]
                        or (args.videos and not (args.videos / f"{name}.mp4").exists()))
                    if (task, seed, n, name) in done and not timing:
                        continue
                    out = args.out / "generative_runs" / task / f"seed_{seed}" / f"{n}" / name
                    if (task, seed, n, name) in done:
                        row = next(r for r in result["runs"]
                                   if cell_key(r) == (task, seed, n, name))
                    else:
                        if pool is None:
                            pool = demonstrations(task, seed, max(args.demos))
                        row = fit(task, name, pool[:n], seed, out, args.device)
                        row.update(evaluate(task, row["checkpoint"], args.eval_episodes),
                                   task=task, seed=seed, demos=n, policy=name)
                        result["runs"].append(row)
                        print(f"{task} seed {seed} demos {n} {name}: success "
                              f"{row['success']:.2f}, trained in {row['train_s']:.0f} s",
                              flush=True)
                    if timing and Path(row["checkpoint"]).exists():
                        result["timing"][name] = {"train_s": row["train_s"],
                                                  **realtime_ticks(task, row["checkpoint"])}
                        if args.videos:
                            from robot_imitation.report import rollout_video

                            args.videos.mkdir(parents=True, exist_ok=True)
                            rollout_video(args.videos / f"{name}.mp4", task, row["checkpoint"])
                    save()
    if args.videos and not (args.videos / "expert.mp4").exists():
        from robot_imitation.report import rollout_video

        args.videos.mkdir(parents=True, exist_ok=True)
        rollout_video(args.videos / "expert.mp4", args.tasks[0])
    save()
    return result


def merge(paths: list, timing_path: Path | None = None) -> dict:
    """The results of several runs of the grid as one: every cell once (the first file that has
    it), the experts (which must agree: the same fixed episodes), the timing of the first file
    that measured it, or of ``timing_path`` (``--timing-only``) where that exists."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    result = {k: first[k] for k in ("eval_episodes", "device")}
    for part, path in zip(parts[1:], paths[1:]):
        if part["eval_episodes"] != first["eval_episodes"]:
            raise SystemExit(f"error: {path} was measured with eval_episodes "
                             f"{part['eval_episodes']}, {paths[0]} with {first['eval_episodes']}")
    runs, seen = [], set()
    for part in parts:
        for row in part.get("runs", []):
            if cell_key(row) not in seen:
                seen.add(cell_key(row))
                runs.append(row)
    expert: dict = {}
    for part, path in zip(parts, paths):
        for task, e in part.get("expert", {}).items():
            if task in expert and expert[task]["successes"] != e["successes"]:
                raise SystemExit(f"error: {path}: the expert's {task} success differs "
                                 f"({e['successes']} against {expert[task]['successes']})")
            expert.setdefault(task, e)
    order = {name: i for i, name in enumerate(POLICIES)}
    result.update(
        tasks=list(dict.fromkeys(t for part in parts for t in part["tasks"])),
        seeds=sorted({r["seed"] for r in runs}), demos=sorted({r["demos"] for r in runs}),
        policies=sorted({r["policy"] for r in runs}, key=lambda p: order.get(p, 99)),
        runs=runs, expert=expert, wall_s=sum(part.get("wall_s", 0.0) for part in parts))
    timed = next((part for part in parts if part.get("timing")), None)
    result["timing"] = timed["timing"] if timed else {}
    if timed:  # a run measures the timing on its own timing cell
        result["timing_cell"] = {"task": timed["tasks"][0], "seed": timed["seeds"][0],
                                 "demos": max(timed["demos"])}
    if timing_path is not None and timing_path.exists():
        measured = json.loads(timing_path.read_text())
        result["timing"] = measured["timing"]
        result["timing_cell"] = {k: measured[k] for k in ("task", "seed", "demos")}
    return result


def timing_only(args) -> None:
    """Per-policy timing (``realtime_ticks``) of the checkpoints of an earlier run's timing cell
    (first task, first seed, most demonstrations), measured again: on a quiet machine, where the
    grid's run measured them while other training ran."""
    import torch

    torch.set_num_threads(1)
    earlier = json.loads(args.timing_only.read_text())
    task, seed, demos = earlier["tasks"][0], earlier["seeds"][0], max(earlier["demos"])
    timing = {}
    for name in args.policies:
        row = next((r for r in earlier["runs"]
                    if cell_key(r) == (task, seed, demos, name)), None)
        if row is None or not Path(row["checkpoint"]).exists():
            print(f"{name}: no checkpoint of {task}, seed {seed}, {demos} demos: skipped")
            continue
        timing[name] = {"train_s": row["train_s"], **realtime_ticks(task, row["checkpoint"])}
        print(f"{name}: {timing[name]}", flush=True)
    out = args.out / "generative_timing.json"
    out.write_text(json.dumps({"task": task, "seed": seed, "demos": demos, "timing": timing},
                              indent=2) + "\n")
    print(f"wrote {out}")


def summarize(result: dict, out: Path) -> dict:
    """The table (mean success over seeds, min-max, ratio to the expert), the goal checks and
    the timing; writes generative.json and generative.png."""
    table = {}
    for r in result["runs"]:
        table.setdefault((r["task"], r["policy"], r["demos"]), []).append(r)
    print(f"\n{len(result['seeds'])} seeds, {result['eval_episodes']} evaluation episodes, "
          f"training on {result['device']}")
    print(f"{'task':<15}{'policy':<11}{'demos':>6}{'success':>9}{'min':>6}{'max':>6}"
          f"{'/expert':>9}{'train s':>9}{'seeds':>7}")
    means, counts = {}, {}
    for (task, policy, demos), rows in sorted(table.items()):
        s = [r["success"] for r in rows]
        expert = result["expert"][task]["success"]
        means[(task, policy, demos)] = float(np.mean(s))
        counts[(task, policy, demos)] = len(s)
        print(f"{task:<15}{policy:<11}{demos:>6}{np.mean(s):>9.2f}{min(s):>6.2f}{max(s):>6.2f}"
              f"{np.mean(s) / max(expert, 1e-9):>9.2f}"
              f"{np.mean([r['train_s'] for r in rows]):>9.0f}{len(s):>7}")
    for task, e in result["expert"].items():
        print(f"{task}: expert {e['success']:.2f} ({e['successes']}/{e['episodes']})")
    checks = []
    top = max(result["demos"])
    for task in result["tasks"]:
        expert = result["expert"][task]["success"]
        got = {p: means.get((task, p, top)) for p in result["policies"]}
        if task.startswith("push_obstacle"):
            for p in ("act", "diffusion"):
                if got.get(p) is not None:
                    checks.append((f"{task}: {p} >= 0.9 x expert at {top} demos",
                                   got[p] >= 0.9 * expert, f"{got[p] / max(expert, 1e-9):.2f}"))
            if got.get("mlp-mse") is not None:
                checks.append((f"{task}: mlp-mse < 0.5 x expert at {top} demos",
                               got["mlp-mse"] < 0.5 * expert,
                               f"{got['mlp-mse'] / max(expert, 1e-9):.2f}"))
        elif got.get("mlp-mse") is not None:
            for p in ("act", "diffusion"):
                if got.get(p) is not None:
                    checks.append((f"{task}: {p} >= mlp-mse at {top} demos",
                                   got[p] >= got["mlp-mse"], f"{got[p]:.2f} vs "
                                   f"{got['mlp-mse']:.2f}"))
    partial = {t for (t, p, n), c in counts.items() if n == top and c < len(result["seeds"])}
    checks = [(text + (" (partial: not every seed measured)"
                       if text.split(":")[0] in partial else ""), ok, value)
              for text, ok, value in checks]
    for text, ok, value in checks:
        print(f"goal {text}: {'met' if ok else 'NOT met'} ({value})")
    if result.get("timing"):
        cell = result.get("timing_cell") or {"task": result["tasks"][0],
                                             "seed": result["seeds"][0], "demos": top}
        print(f"\nper policy (trained on {cell['demos']} demonstrations, seed {cell['seed']}, "
              f"{cell['task']}; ticks at the control rate in real time, late_chunk hold):")
        print(f"{'policy':<11}{'backend':>12}{'train s':>9}{'chunk p50 ms':>14}"
              f"{'tick p50 ms':>13}{'tick p99 ms':>13}{'no action':>11}")
        for name, t in result["timing"].items():
            chunk = "-" if t["chunk_p50_ms"] is None else f"{t['chunk_p50_ms']:.2f}"
            print(f"{name:<11}{t['backend']:>12}{t['train_s']:>9.0f}{chunk:>14}"
                  f"{t['tick_p50_ms']:>13.3f}{t['tick_p99_ms']:>13.3f}"
                  f"{t['no_action_ticks']:>8}/{t['ticks']}")
    result["goals"] = [{"goal": t, "met": ok, "value": v} for t, ok, v in checks]
    (out / "generative.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, means, out / "generative.png")
    print(f"wrote {out / 'generative.json'} and generative.png ({result.get('wall_s', 0):.0f} s)")
    return result


def plot(result: dict, means: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    seeds = len(result["seeds"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for policy in result["policies"]:
            xs = [n for n in result["demos"] if (task, policy, n) in means]
            line, = ax.plot(xs, [means[(task, policy, n)] for n in xs], marker="o",
                            label=policy)
            # each seed's success, faint: a mean over fewer seeds than the grid's is marked
            rows = [r for r in result["runs"] if r["task"] == task and r["policy"] == policy]
            ax.scatter([r["demos"] for r in rows], [r["success"] for r in rows], s=12,
                       color=line.get_color(), alpha=0.35)
            for n in xs:
                count = sum(1 for r in rows if r["demos"] == n)
                if count < seeds:
                    ax.annotate(f"{count} seed" + "s" * (count > 1),
                                (n, means[(task, policy, n)]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=line.get_color())
        ax.axhline(result["expert"][task]["success"], color="k", ls="--", lw=1, label="expert")
        ax.set_title(task)
        ax.set_xlabel("demonstrations")
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["push_obstacle", "push"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--demos", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--device", default="cpu", help="training device: cpu, cuda or auto")
    ap.add_argument("--videos", type=Path, nargs="?", const=HERE.parent / "docs" / "generative",
                    help="write a rollout video per policy on the first task (default folder: "
                    "docs/generative)")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="folder of generative.json, the plot and the checkpoints")
    ap.add_argument("--fresh", action="store_true",
                    help="measure every cell again (default: keep the cells in --out's JSON)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for training (default: every core)")
    ap.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                    help="summarize earlier generative.json files again, merged (no training): "
                    "parts of the grid run apart (--seeds, --tasks, --out), on one machine or "
                    "several")
    ap.add_argument("--timing-only", type=Path, metavar="JSON",
                    help="measure only the per-policy timing again (on a quiet machine), from "
                    "the checkpoints of JSON's timing cell; writes generative_timing.json in "
                    "--out, which --report prefers to the timing found in the runs' files")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.timing_only:
        timing_only(args)
        return 0
    if args.report:
        summarize(merge(args.report, args.out / "generative_timing.json"), args.out)
        return 0
    summarize(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
