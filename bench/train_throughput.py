"""Training throughput: on-device data and sampling (``DeviceData``) against a plain DataLoader.

Synthetic arrays with the shapes of the real specs (no ROS, no recording): low-dimensional
samples of the ``push`` spec and camera frames (96x96 rgb8) with the low-dimensional keys of
``push_image``, split into episodes, go through the trainer's own code: ``DeviceData``,
the policy built through the registry (``make_policy``), the trainer's step (bf16 autocast
and fused AdamW on CUDA, cosine learning rate).

For each policy and batch size, in one run:
1. ours: the arrays whole on the device, indices drawn with ``torch.randint`` on the device,
   the batch gathered there (``DeviceData.batch``, random image shift included);
2. baseline: ``torch.utils.data.DataLoader`` over a ``TensorDataset`` of CPU tensors (shuffle,
   ``pin_memory`` on CUDA, ``--workers`` processes), each batch moved host-to-device
   (``non_blocking`` on CUDA), the same image shift on the device, the same model and step.

On CUDA also: eager, ours without CUDA graphs; and with ``--compile MODE``, compiled: ours with
the loss compiled (the trainer's ``compile`` setting; the report gives its compile time).

The pipelines alternate in rounds of timed windows after a warm-up (the median window counts).
Reported: samples per second (frames per second for the image policy), the share of step time
spent getting the batch (goal <= 10 %), and the ratio ours / baseline. Results go to
bench/results/train_throughput.json.

    .venv/bin/python bench/train_throughput.py [--device cuda] [--seconds 4] [--workers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import encoder_variants  # noqa: E402 (a sibling script)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ===================================================================== synthetic data
def synthetic_arrays(spec, n: int, episode_length: int, seed: int) -> dict:
    """Arrays shaped like ``Dataset.arrays()`` for ``spec``: obs {key: array}, actions, episode."""
    rng = np.random.default_rng(seed)
    obs = {}
    for f in spec.observations:
        if f.is_image:
            obs[f.key] = rng.integers(0, 256, size=(n, *f.shape), dtype=np.uint8)
        else:
            obs[f.key] = rng.standard_normal((n, *f.shape))
    return {"obs": obs, "actions": rng.uniform(-1.0, 1.0, (n, spec.action_dim)),
            "episode": np.arange(n, dtype=np.int64) // max(1, episode_length)}


# ===================================================================== timing
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds() -> tuple | None:
    """(CPU-seconds the whole machine has been busy, CPU-seconds of this process and its
    waited-for children) from /proc and getrusage; None where /proc/stat is missing."""
    import resource

    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # - idle, iowait
    own = sum(getattr(resource.getrusage(who), attr)
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for attr in ("ru_utime", "ru_stime"))
    return busy, own


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def window(next_batch, step, device, steps: int, seconds: float, timed: bool) -> dict:
    """Run ``step(next_batch())`` for ``steps`` steps (with steps 0: for at least ``seconds``,
    one step at least). ``timed``: also the time getting the batch and the whole step's time,
    on the CPU by the clock (every operation is synchronous there), on CUDA by events recorded
    in the stream around each half: the device's own time line, where getting a batch runs
    from the end of the last step to the batch being ready (a DataLoader's wait for the host
    included), with no synchronization inside the window."""
    sync(device)
    cuda = device.type == "cuda"
    marks = []
    t0 = time.perf_counter()
    n, data_s, total_s = 0, 0.0, 0.0
    while True:
        if timed and cuda:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
            batch = next_batch()
            ev[1].record()
            step(batch)
            ev[2].record()
            marks.append(ev)
            t_c = time.perf_counter()
        else:
            t_a = time.perf_counter()
            batch = next_batch()
            t_b = time.perf_counter()
            step(batch)
            t_c = time.perf_counter()
            data_s += t_b - t_a
            total_s += t_c - t_a
        n += 1
        if (steps and n >= steps) or (not steps and t_c - t0 >= seconds):
            break
    sync(device)
    wall = time.perf_counter() - t0
    if marks:
        data_s = sum(a.elapsed_time(b) for a, b, _ in marks) / 1e3
        total_s = sum(a.elapsed_time(c) for a, _, c in marks) / 1e3
    return {"steps": n, "seconds": wall, "steps_per_s": n / wall, "data_s": data_s,
            "step_s": total_s}


def compare(pipelines: dict, batch_size: int, device, args) -> dict:
    """Measure each pipeline {name: (next_batch, step)} in the same conditions: warm-up each,
    then ``--rounds`` rounds of one throughput window per pipeline in turn (the median window
    counts: a burst of other work on the machine hits one window, not a whole pipeline).

    Data share: on CUDA a further window per pipeline with CUDA events around each half of the
    step (the host's clock sees kernel launches, not the work); on the CPU every operation is
    synchronous, so the throughput windows give it directly."""
    results = {}
    for name, (next_batch, step) in pipelines.items():
        t0, n = time.perf_counter(), 0
        while n < args.warmup_steps or time.perf_counter() - t0 < args.warmup_seconds:
            step(next_batch())
            n += 1
        sync(device)
        results[name] = {"warmup_steps": n, "warmup_s": time.perf_counter() - t0,
                         "windows": []}
    for _ in range(args.rounds):
        for name, (next_batch, step) in pipelines.items():
            results[name]["windows"].append(window(next_batch, step, device, args.steps,
                                                   args.seconds / args.rounds,
                                                   timed=device.type == "cpu"))
    for name, (next_batch, step) in pipelines.items():
        r = results[name]
        rate = float(np.median([w["steps_per_s"] for w in r["windows"]]))
        r["samples_per_s"] = rate * batch_size
        r["step_ms"] = 1e3 / rate
        if device.type == "cuda":
            share = window(next_batch, step, device, args.steps, args.seconds / 2, timed=True)
            r["share_window"] = share
            r["data_share"] = share["data_s"] / share["step_s"]
        else:
            r["data_share"] = (sum(w["data_s"] for w in r["windows"])
                               / sum(w["step_s"] for w in r["windows"]))
    return results


# ===================================================================== the two pipelines
def make_step(spec, family: str, chunk: int, data, batch_size: int, graph: bool, seed: int,
              compile: str = "none"):
    """The trainer's step (``TrainStep``) on a fresh policy of ``family`` over ``data``: draw()
    gives a batch, update(batch) takes one optimizer step on it. ``graph``: captured in CUDA
    graphs after its warm-up (on CUDA); ``compile``: ``TrainConfig.compile``."""
    from robot_imitation.learning.step import TrainStep
    from robot_imitation.learning.trainer import TrainConfig
    from robot_imitation.policies import make_policy

    torch.manual_seed(seed)
    cfg = TrainConfig(policy=family, chunk=chunk)
    policy = make_policy(spec, cfg).to(data.device)
    gen = torch.Generator(device=data.device)
    gen.manual_seed(seed)
    taker = TrainStep(policy, data, batch_size=batch_size, lr=cfg.lr,
                      weight_decay=cfg.weight_decay, steps=10**9, shift=cfg.augment_shift,
                      amp=cfg.amp, generator=gen, graph=graph, compile=compile, log=_quiet)
    return taker, cfg.augment_shift


def _quiet(*_args) -> None:
    pass


def baseline(cpu_data, spec, batch_size: int, shift: int, device: torch.device, workers: int,
             seed: int):
    """A plain DataLoader over CPU tensors; each batch moved to the device."""
    from torch.utils.data import DataLoader, TensorDataset

    from robot_imitation.learning.trainer import random_shift

    keys = [f.key for f in spec.observations]
    images = {f.key for f in spec.image_observations}
    dataset = TensorDataset(*[cpu_data.obs[k] for k in keys],
                            cpu_data.actions[cpu_data.chunk_index], cpu_data.chunk_mask)
    cuda = device.type == "cuda"
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                        generator=gen)

    def batches():
        while True:
            yield from loader

    it = batches()

    def next_batch():
        tensors = [t.to(device, non_blocking=cuda) for t in next(it)]
        obs = {}
        for k, t in zip(keys, tensors):
            obs[k] = random_shift(t, shift) if k in images and shift else t
        return None, obs, tensors[-2], tensors[-1]

    return next_batch, loader


# ===================================================================== one policy
def run_policy(label: str, spec, family: str, n: int, chunk: int, batch_sizes: list, device,
               args) -> list:
    from robot_imitation.learning.trainer import DeviceData

    start = time.perf_counter()
    arrays = synthetic_arrays(spec, n, args.episode_length, args.seed)
    data = DeviceData(arrays, spec, chunk, device)
    cpu_data = data if device.type == "cpu" else DeviceData(arrays, spec, chunk,
                                                             torch.device("cpu"))
    del arrays
    print(f"[bench] {label}: {n} samples ready in {time.perf_counter() - start:.1f} s",
          flush=True)
    cuda = device.type == "cuda"
    rows = []
    for batch_size in batch_sizes:
        if batch_size > n:
            print(f"[bench] {label}: batch {batch_size} > {n} samples, skipped", flush=True)
            continue
        pipelines, graphed, loader, compiled = {}, None, None, None
        names = ["ours", "eager", "baseline"] if cuda else ["ours", "baseline"]
        if cuda and args.compile != "none":
            names.insert(1, "compiled")
        for name in names:
            taker, shift = make_step(spec, family, chunk, data, batch_size,
                                     graph=name in ("ours", "compiled") and not args.no_graph,
                                     seed=args.seed,
                                     compile=args.compile if name == "compiled" else "none")
            if name == "compiled":
                compiled = taker
            if name == "baseline":
                next_batch, loader = baseline(cpu_data, spec, batch_size, shift, device,
                                              args.workers, args.seed)
            else:
                next_batch = taker.draw
            pipelines[name] = (next_batch, taker.update)
            graphed = graphed or taker
        measured = compare(pipelines, batch_size, device, args)
        del pipelines, next_batch, loader  # stops the DataLoader's workers, if any
        a, b = measured["ours"], measured["baseline"]
        row = {"policy": label, "family": family, "chunk": chunk, "batch": batch_size,
               "samples": n, "cuda_graph": graphed.captured, "why_eager": graphed.why_eager,
               "ours": a, "baseline": b,
               "ours_over_baseline": a["samples_per_s"] / b["samples_per_s"]}
        graphed = None
        text = ""
        if compiled is not None:
            c = measured["compiled"]
            row["compiled"] = c
            row["compiled_ok"] = compiled.compiled and compiled.captured
            row["why_uncompiled"] = compiled.why_uncompiled or compiled.why_eager
            row["compiled_over_ours"] = c["samples_per_s"] / a["samples_per_s"]
            text += (f", compiled {c['samples_per_s']:,.0f}/s ({100 * c['data_share']:.1f} % "
                     f"data, {c['warmup_s']:.0f} s to compile and warm up"
                     + ("" if row["compiled_ok"] else f"; not as asked: "
                        f"{row['why_uncompiled'] or 'uncaptured'}") + ")")
            compiled = None
        if "eager" in measured:
            e = measured["eager"]
            row["eager"] = e
            row["ours_over_eager"] = a["samples_per_s"] / e["samples_per_s"]
            text += f", eager {e['samples_per_s']:,.0f}/s"
        print(f"[bench] {label} batch {batch_size}: ours {a['samples_per_s']:,.0f}/s "
              f"({100 * a['data_share']:.1f} % data, graphs {graphed_text(row)}){text}, "
              f"DataLoader {b['samples_per_s']:,.0f}/s ({100 * b['data_share']:.1f} % data)",
              flush=True)
        rows.append(row)
    del data, cpu_data
    if cuda:
        torch.cuda.empty_cache()
    return rows


def compiled_text(row: dict) -> str:
    if "compiled" not in row:
        return f"{'-':>12s} {'-':>7s} {'-':>9s} "
    c = row["compiled"]
    return (f"{c['samples_per_s']:12,.0f} {100 * c['data_share']:7.1f} "
            f"{row['compiled_over_ours']:9.2f} ")


def graphed_text(row: dict) -> str:
    if row["cuda_graph"]:
        return "yes"
    return f"no: {row['why_eager']}" if row["why_eager"] else "no"


def report(results: dict) -> str:
    m = results["machine"]
    eager = any("eager" in r for r in results["rows"])
    comp = any("compiled" in r for r in results["rows"])
    lines = [f"Training throughput on {m['device']} ({m['device_name']}), torch {m['torch']}, "
             f"{m['cpus']} CPUs, {m['threads']} threads, DataLoader workers "
             f"{results['config']['workers']}"
             + ("" if results["encoder_variant"] == "as-is" else
                f", camera encoder variant {results['encoder_variant']} (largest difference "
                f"{results['encoder_variant_error']:.1e})"),
             f"  {'policy':21s} {'batch':>6s} {'ours /s':>12s} {'data %':>7s} {'graph':>5s} "
             + (f"{'compiled /s':>12s} {'data %':>7s} {'comp/ours':>9s} " if comp else "")
             + (f"{'eager /s':>11s} " if eager else "")
             + f"{'DataLoader /s':>14s} {'data %':>7s} "
             + (f"{'ours/eager':>10s} " if eager else "") + f"{'ours/DL':>8s}"]
    for r in results["rows"]:
        lines.append(f"  {r['policy']:21s} {r['batch']:6d} "
                     f"{r['ours']['samples_per_s']:12,.0f} {100 * r['ours']['data_share']:7.1f} "
                     f"{'yes' if r['cuda_graph'] else 'no':>5s} "
                     + (compiled_text(r) if comp else "")
                     + (f"{r['eager']['samples_per_s']:11,.0f} " if eager else "")
                     + f"{r['baseline']['samples_per_s']:14,.0f} "
                     f"{100 * r['baseline']['data_share']:7.1f} "
                     + (f"{r['ours_over_eager']:10.2f} " if eager else "")
                     + f"{r['ours_over_baseline']:8.2f}")
    lines.append("  (samples per second; frames per second for image policies; data %: share "
                 "of step time getting the batch, goal <= 10; graph: ours replays the step as "
                 "CUDA graphs; eager: the same step without graphs"
                 + ("; compiled: ours with the loss compiled, --compile "
                    f"{results['config']['compile']}" if comp else "") + ")")
    for r in results["rows"]:
        if r["why_eager"]:
            lines.append(f"  {r['policy']} batch {r['batch']}: not captured ({r['why_eager']})")
        if "compiled" in r:
            lines.append(f"  {r['policy']} batch {r['batch']}: compiled in "
                         f"{r['compiled']['warmup_s']:.0f} s (warm-up included)"
                         + ("" if r["compiled_ok"] else
                            f"; not compiled and captured: {r['why_uncompiled']}"))
    others = results["other_processes_cpu_s"]
    if others is not None:
        share = others / results["total_s"] / (m["cpus"] or 1)
        lines.append(f"  other processes used {others:.1f} CPU-s during the "
                     f"{results['total_s']:.0f} s run ({100 * share:.0f} % of the machine): "
                     "compare runs only when this is small")
    return "\n".join(lines)


def str_list(text: str) -> list:
    return [x.strip() for x in text.split(",") if x.strip()]


def int_list(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def family_chunk(family: str) -> int:
    from robot_imitation.policies import policy_class

    return policy_class(family).config_class.default_chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="measured seconds per pipeline and configuration, over all rounds "
                             "(default 4)")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per measured window (per round) instead of --seconds")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured windows per pipeline, alternating ours and baseline; "
                             "the median counts (default 3)")
    parser.add_argument("--warmup-steps", type=int, default=5,
                        help="warm-up steps per pipeline (at least 4: ours captures its CUDA "
                             "graphs after 3 eager steps)")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    parser.add_argument("--low-dim-samples", type=int, default=200_000)
    parser.add_argument("--image-frames", type=int, default=20_000)
    parser.add_argument("--batch-sizes", type=int_list, default=[256, 1024, 8192],
                        help="low-dimensional batch sizes (comma separated)")
    parser.add_argument("--chunks", type=int_list, default=[1, 8],
                        help="low-dimensional action chunk lengths (comma separated)")
    parser.add_argument("--image-batch", type=int_list, default=[256],
                        help="image batch sizes (comma separated; 0: no image policy)")
    parser.add_argument("--families", type=str_list, default=["mlp"],
                        help="policy families (comma separated): mlp at each --chunks, the "
                             "others (act, diffusion) at their default chunk")
    parser.add_argument("--image-families", type=str_list, default=["mlp"],
                        help="policy families with the image spec (comma separated)")
    parser.add_argument("--compile", default="none", choices=["none", "default", "max-autotune"],
                        help="on CUDA, also measure the step with the loss compiled (the "
                        "trainer's compile setting), graphs on, as a fourth pipeline")
    parser.add_argument("--encoder-variant", default="as-is",
                        choices=list(encoder_variants.VARIANTS),
                        help="on CUDA, the camera encoder's layers as they are or an "
                        "alternative (encoder_variants.py), checked against them first; every "
                        "pipeline uses it")
    parser.add_argument("--no-graph", action="store_true",
                        help="ours without CUDA graphs (as TrainConfig.cuda_graph false)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (torch.set_num_threads; 0: torch's default)")
    parser.add_argument("--episode-length", type=int, default=100)
    parser.add_argument("--low-dim-spec", default="push")
    parser.add_argument("--image-spec", default="push_image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.steps < 0:
        parser.error("--rounds must be >= 1, --seconds > 0, --steps >= 0")

    from robot_imitation.learning.trainer import resolve_device
    from robot_imitation.spec import Spec

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        variant_error = encoder_variants.adopt(args.encoder_variant, device, "[bench]")
    except encoder_variants.VariantError as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cpu_start = cpu_seconds()
    rows = []
    low = Spec.load(args.low_dim_spec)
    for family in args.families:
        chunks = args.chunks if family == "mlp" else [family_chunk(family)]
        for chunk in chunks:
            rows += run_policy(f"{family} low-dim c{chunk}", low, family, args.low_dim_samples,
                               chunk, args.batch_sizes, device, args)
    image_batches = [b for b in args.image_batch if b > 0]
    if image_batches and args.image_frames > 0:
        image = Spec.load(args.image_spec)
        if not image.image_observations:
            parser.error(f"spec {args.image_spec} has no camera observation")
        for family in args.image_families:
            chunk = 1 if family == "mlp" else family_chunk(family)
            rows += run_policy(f"{family} image c{chunk}", image, family, args.image_frames,
                               chunk, image_batches, device, args)

    elapsed = time.perf_counter() - start
    others = None
    if cpu_start and (cpu_end := cpu_seconds()):
        others = max(0.0, (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1]))
    results = {
        "machine": {
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else cpu_name()),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },
        "config": {k: v for k, v in vars(args).items()},
        "specs": {"low_dim": args.low_dim_spec, "image": args.image_spec},
        "encoder_variant": args.encoder_variant,
        "encoder_variant_error": variant_error,
        "total_s": elapsed,
        "other_processes_cpu_s": others,
        "rows": rows,
    }
    print()
    print(report(results))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "train_throughput.json"
    out.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"\n[bench] results in {os.path.relpath(out)} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
