"""Where a training step's time goes: the kernels of one policy's step, by name and by kind.

The trainer's own step (``TrainStep``, as ``train_throughput.py`` builds it: synthetic arrays
of the spec's shapes on the device, the policy from the registry, bf16 autocast and fused
AdamW on CUDA) runs ``--warmup`` steps, then ``--steps`` steps under ``torch.profiler``
without CUDA graphs, so that each kernel shows under its own name (graphs only take the
launch gaps away). On CUDA it reports each kernel's device time per step, and kinds of kernel
summed by name (convolutions, group norms, matrix products, ...); on the CPU, each operator's
own CPU time. The ratio printed is the kernels' time over the step's wall time without graphs:
how busy the device is, with launches as the only other cost.

    python bench/step_profile.py --device cuda --family mlp --batch 1024 --compile default
    python bench/step_profile.py ... --encoder-variant channel-stats-gn   (encoder_variants.py)

Results go to bench/results/step_profile.json (every kernel, with its time and calls).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import encoder_variants  # noqa: E402 (sibling scripts)
import train_throughput as tt  # noqa: E402

# kinds of kernel, by the first pattern their name contains (lower case), in this order
KINDS = (
    ("group norm", ("group_norm",)),
    ("softmax", ("softmax",)),
    ("convolution", ("conv", "xmma", "cutlass", "cudnn", "im2col", "implicit_gemm")),
    ("matrix product", ("gemm", "nvjet", "addmm", "::mm", "bmm", "matmul", "linear")),
    ("gather", ("index", "gather", "embedding")),
    ("padding", ("pad",)),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("activation", ("relu", "clamp_min", "threshold", "gelu", "silu")),
    ("copy and elementwise", ("copy", "elementwise", "triton_poi", "fill", "cast")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, patterns in KINDS:
        if any(p in low for p in patterns):
            return kind
    return "other"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--family", default="mlp", help="policy family (mlp, act, diffusion)")
    p.add_argument("--spec", default="push_image", help="spec whose shapes the data takes")
    p.add_argument("--chunk", type=int, default=0,
                   help="action chunk (0: 1 for mlp, the family's default otherwise)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--samples", type=int, default=20_000, help="synthetic samples (frames)")
    p.add_argument("--episode-length", type=int, default=100)
    p.add_argument("--compile", default="none", choices=["none", "default", "max-autotune"],
                   help="the trainer's compile setting (CUDA only)")
    p.add_argument("--warmup", type=int, default=8, help="steps before profiling")
    p.add_argument("--steps", type=int, default=20, help="profiled steps")
    p.add_argument("--top", type=int, default=25, help="kernels listed")
    p.add_argument("--encoder-variant", default="as-is",
                   choices=list(encoder_variants.VARIANTS),
                   help="the camera encoder's layers as they are, or an alternative "
                   "(encoder_variants.py), checked against them first")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.batch, args.samples, args.steps, args.top) < 1 or args.warmup < 0:
        p.error("--batch, --samples, --steps and --top must be >= 1, --warmup >= 0")
    if args.batch > args.samples:
        p.error(f"--batch {args.batch} is more than --samples {args.samples}")
    return args


def main(argv=None) -> int:
    from torch.profiler import ProfilerActivity, profile

    from robot_imitation.learning.trainer import DeviceData, resolve_device
    from robot_imitation.policies import policy_class
    from robot_imitation.spec import Spec

    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        spec = Spec.load(args.spec)
        policy_class(args.family)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:  # the user's values
        print(f"[step_profile] error: {exc}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    try:
        variant_error = encoder_variants.adopt(args.encoder_variant, device, "[step_profile]")
    except encoder_variants.VariantError as exc:
        print(f"[step_profile] error: {exc}", file=sys.stderr)
        return 2
    chunk = args.chunk or (1 if args.family == "mlp" else tt.family_chunk(args.family))
    data = DeviceData(tt.synthetic_arrays(spec, args.samples, args.episode_length, args.seed),
                      spec, chunk, device)
    taker, _ = tt.make_step(spec, args.family, chunk, data, args.batch, graph=False,
                            seed=args.seed, compile=args.compile if cuda else "none")
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        taker.update(taker.draw())
    tt.sync(device)
    warm_s = time.perf_counter() - t0
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    cpu_start = tt.cpu_seconds()
    with profile(activities=[activity]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            taker.update(taker.draw())
        tt.sync(device)
        wall_s = time.perf_counter() - t0
    wall_ms = wall_s * 1e3 / args.steps  # profiling adds a little
    others = None
    if cpu_start and (cpu_end := tt.cpu_seconds()):
        others = max(0.0, (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1]))
    per = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0:
            per[e.key][0] += t / args.steps
            per[e.key][1] += e.count
    total_us = sum(t for t, _ in per.values())
    kinds = defaultdict(float)
    for name, (t, _) in per.items():
        kinds[kind_of(name)] += t
    what = "kernels" if cuda else "operators' own CPU time"
    name = torch.cuda.get_device_name(device) if cuda else tt.cpu_name()
    lines = [f"Step profile on {device} ({name}), torch {torch.__version__}: {args.family} "
             f"on {args.spec}, chunk {chunk}, batch {args.batch}, compile "
             f"{args.compile if cuda else 'none'}, encoder {args.encoder_variant}, "
             f"{args.steps} steps after {args.warmup} "
             f"({warm_s:.1f} s)",
             f"  {what}: {total_us / 1e3:.3f} ms a step; wall time a step without graphs "
             f"{wall_ms:.3f} ms; {what} / wall {total_us / 1e3 / wall_ms:.2f}",
             "  by kind:"]
    for kind, t in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:22s} {t / 1e3:8.3f} ms {100 * t / total_us:5.1f} %")
    if others is not None:
        lines.append(f"  other processes used {others:.1f} CPU-s during the {wall_s:.1f} s "
                     f"profiled ({100 * others / wall_s / (os.cpu_count() or 1):.0f} % of the "
                     f"machine): compare runs only when this is small")
    lines.append(f"  top {args.top} (us a step, share, calls a step):")
    rows = sorted(per.items(), key=lambda kv: -kv[1][0])
    for kernel, (t, n) in rows[:args.top]:
        lines.append(f"    {t:9.1f} {100 * t / total_us:5.1f} % {n / args.steps:5.1f}  "
                     f"{kernel[:100]}")
    print("\n".join(lines))
    results = {"device": str(device), "device_name": name, "torch": torch.__version__,
               "config": vars(args), "chunk": chunk, "warmup_s": warm_s,
               "compiled": bool(getattr(taker, "compiled", False)),
               "encoder_variant_error": variant_error,
               "per_step_us": total_us, "wall_per_step_ms": wall_ms,
               "other_processes_cpu_s": others,
               "kinds_us": dict(kinds),
               "kernels": [{"name": k, "us_per_step": t, "calls": n} for k, (t, n) in rows]}
    tt.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = tt.RESULTS_DIR / "step_profile.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"[bench] results in {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
