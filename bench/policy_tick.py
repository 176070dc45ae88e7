"""The policy node's own work per state, in-process: its callbacks against the inference alone.

A ``PolicyNode`` (the node itself, made in this process with the parameters given; the
executor not spun) gets each state of a spec as rclpy-serialized bytes, straight into its state
callback (what its raw subscriptions hand it): reading the spec's fields from the bytes,
assembling the observation, the controller (inference, checks, the action filter), the
commands' bytes and their publishes, to a subscriber in this process, so that it answers. The
baseline, in the same run: the backend's inference alone (``head()``) on the same inputs. Per
round (the two alternate): wall time and thread CPU per state, and the ratio of the node's
callbacks to the inference. No DDS between processes: what `bench/policy_latency.py` measures
on top of this is the middleware.

    .venv/bin/python bench/policy_tick.py [--spec reach] [--states 5000] [--rounds 3]
                                          [--backend auto] [--checkpoint DIR]

The checkpoint defaults to untrained random weights of the trained architecture (as in
`policy_latency.py`). Prints a table, writes bench/results/policy_tick.json. It only measures.
"""
from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the benchmark's private ROS domain and its states (policy_latency sets the domain on import)
from policy_latency import make_checkpoint, make_states  # noqa: E402

import rclpy  # noqa: E402
from rclpy.qos import QoSProfile, QoSReliabilityPolicy  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from benchlib import save_results  # noqa: E402
from robot_imitation.deploy.backends import KINDS  # noqa: E402
from robot_imitation.spec import Spec  # noqa: E402

_TIME = struct.Struct("<iI")  # a header stamp, right after the 4-byte CDR encapsulation


def stamped(raws: list, t: float) -> list:
    """The serialized messages of one state, each with the header stamp ``t`` (s)."""
    sec = int(t)
    nsec = int(round((t - sec) * 1e9))
    out = []
    for topic, buf in raws:
        _TIME.pack_into(buf, 4, sec, nsec)
        out.append((topic, bytes(buf)))
    return out


def measure(node, states_raw: list, n: int) -> dict:
    """Each state into the node's callback; wall and thread CPU of the callbacks per state."""
    on_state = node._on_state
    commands0 = node.controller.counters.commands
    clamped0 = node.controller.counters.clamped_ticks
    wall = np.empty(n)
    cpu = 0.0
    for i in range(n):
        msgs = stamped(states_raw[i % len(states_raw)], time.time())
        c0, w0 = time.thread_time(), time.perf_counter()
        for topic, raw in msgs:
            on_state(topic, raw)
        wall[i] = time.perf_counter() - w0
        cpu += time.thread_time() - c0
    answered = node.controller.counters.commands - commands0
    clamped = node.controller.counters.clamped_ticks - clamped0
    return {"wall_us_p50": float(np.median(wall) * 1e6), "wall_us_mean": float(wall.mean() * 1e6),
            "cpu_us": cpu / n * 1e6, "answered": answered, "clamped": clamped, "states": n}


def measure_head(backend, n: int) -> dict:
    """The backend's inference alone, n calls on the inputs the node left in its buffers."""
    wall = np.empty(n)
    cpu = 0.0
    for i in range(n):
        c0, w0 = time.thread_time(), time.perf_counter()
        backend.head()
        wall[i] = time.perf_counter() - w0
        cpu += time.thread_time() - c0
    return {"wall_us_p50": float(np.median(wall) * 1e6), "wall_us_mean": float(wall.mean() * 1e6),
            "cpu_us": cpu / n * 1e6}


def run(args) -> dict:
    spec = Spec.load(args.spec)
    if spec.image_observations:
        raise SystemExit("[bench] policy_tick: a spec without cameras (the tick of a low-dim "
                         f"policy); '{spec.name}' observes images")
    checkpoint = args.checkpoint or str(make_checkpoint(
        args.spec, Path(tempfile.mkdtemp(prefix="policy_tick-")) / "random"))
    limits = ["-p", "allow_unlimited:=true"] if args.max_delta is None else \
        ["-p", f"max_delta:=[{args.max_delta!r}]"]
    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={checkpoint}", "-p",
                     f"backend:={args.backend}", *limits])
    from robot_imitation.nodes.policy_node import PolicyNode

    node = PolicyNode()
    probe = rclpy.create_node("policy_tick_probe")
    qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
    for f in spec.actions:  # the node answers only while its commands have a subscriber
        probe.create_subscription(Float64MultiArray, f.topic, lambda _m: None, qos)
    deadline = time.monotonic() + 30
    while not all(p.get_subscription_count() for p in node.pubs):
        if time.monotonic() > deadline:
            raise SystemExit("[bench] policy_tick: the probe's subscriptions never matched")
        time.sleep(0.05)
    states = make_states(spec, 1000)
    raws = [[(t, bytearray(serialize_message(m))) for t, m in states.messages(i)]
            for i in range(states.n)]
    results = {"spec": spec.name, "backend": node.controller.policy.backend.kind,
               "states": args.states, "python": sys.version.split()[0],
               "max_delta": args.max_delta, "rounds": []}
    try:
        measure(node, raws, min(args.states, 500))  # warm-up
        for _ in range(args.rounds):
            tick = measure(node, raws, args.states)
            head = measure_head(node.controller.policy.backend, args.states)
            results["rounds"].append({"node": tick, "inference": head,
                                      "ratio_wall_p50": tick["wall_us_p50"] / head["wall_us_p50"],
                                      "ratio_cpu": tick["cpu_us"] / head["cpu_us"]})
    finally:
        probe.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown()
    return results


def report(r: dict) -> str:
    lines = [f"Policy node callbacks in-process, spec {r['spec']}, backend {r['backend']}, "
             f"{r['states']} states a round (Python {r['python']})",
             "  round  node p50 us  node CPU us/state  answered  inference p50 us  "
             "inference CPU us  node/inference (p50, CPU)"]
    for i, x in enumerate(r["rounds"], 1):
        n, h = x["node"], x["inference"]
        lines.append(f"  {i:5d}  {n['wall_us_p50']:11.1f}  {n['cpu_us']:17.1f}  "
                     f"{n['answered']:8d}  {h['wall_us_p50']:16.1f}  {h['cpu_us']:16.1f}  "
                     f"{x['ratio_wall_p50']:.2f}x, {x['ratio_cpu']:.2f}x")
    lines.append("  node: the state callbacks of one state (three messages for reach), the "
                 "commands published included; inference: head() alone")
    if r.get("max_delta") is not None:
        lines.append(f"  max_delta {r['max_delta']:g}: clamped ticks per round "
                     + ", ".join(str(x["node"]["clamped"]) for x in r["rounds"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="reach", help="spec without cameras (default: reach)")
    ap.add_argument("--states", type=int, default=5000, help="states per round (default 5000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--backend", default="auto", choices=("auto",) + KINDS,
                    help="inference backend (default: auto, as the node)")
    ap.add_argument("--max-delta", type=float, default=None,
                    help="the commands' largest change per tick, with the checkpoint's action "
                         "limits (default: none, allow_unlimited); a tiny one clamps every tick")
    ap.add_argument("--checkpoint", default="", help="a trained checkpoint (default: random "
                    "weights of the trained architecture)")
    args = ap.parse_args(argv)
    if args.states < 1 or args.rounds < 1:
        ap.error("--states and --rounds must be at least 1")
    results = run(args)
    print(report(results))
    save_results("policy_tick", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
