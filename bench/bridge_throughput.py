"""Throughput of the MuJoCo bridge node: what running the simulation behind ROS 2 costs.

Four measurements in one run, on one task (default: push):

1. lockstep through ROS: the bridge (mode lockstep, auto_reset, no cameras) and the scripted
   expert (trigger state) as two processes; closed-loop control ticks per second, from the
   bridge's /diagnostics counters.
2. without ROS: the same task and expert in this process (``ImitationEnv`` + ``make_expert``).
   The ratio of the two is the cost of ROS.

   The two alternate in ``--rounds`` pairs of windows (``--duration / --rounds`` seconds each):
   the bridge is paused (``~/set_pause``) while the in-process loop runs, so neither competes
   with the other, and a slow stretch of the machine hits one pair, whose ratio is its own. The
   ratio reported is the median of the pairs' ratios. Nothing else subscribes to the state
   topics while they run (this process reads /diagnostics only). Each window also gives the
   machine's load: the CPU of every other process (kernel threads included) and the steal
   time (a virtual machine's CPUs kept waiting by its host), in percent of one CPU.
3. lockstep through ROS with the bridge and the expert in one process (``nodes.container``:
   both nodes on one executor, still talking over DDS), against in-process windows alternating
   with it as in 2 (``--skip-composed`` leaves it out).
4. real time: the bridge (mode realtime, real_time_factor 1.0) with the expert on a sim-time
   timer; the real-time factor the bridge achieves, its overruns and physics steps per second.

Prints a table and writes bench/results/bridge_throughput.json. It only measures: no figure is
checked against a threshold. Exits non-zero, printing the nodes' logs, when a node dies or does
not start.

    .venv/bin/python bench/bridge_throughput.py [--task push] [--duration 20] [--rounds 3]
                                                [--realtime-seconds 30] [--skip-realtime]
                                                [--skip-composed]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass

from robot_imitation.ros.graph import SimGraph
from robot_imitation.paths import ensure_ros_environment

# Before rclpy is imported; the node processes inherit both (ProcessGroup copies os.environ).
# A domain of its own keeps the benchmark apart from other ROS 2 processes on the machine.
ensure_ros_environment()
# a private ROS domain (one nothing on this machine uses), this host only: the benchmark's
# simulated commands never reach another graph; its lock is held while the benchmark runs
GRAPH = SimGraph()
os.environ.update(GRAPH.env)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402

from benchlib import (RESULTS_DIR, BenchmarkError, all_processes_cpu_seconds,  # noqa: E402
                      proc_stat, run_with_ros, stat_cpu_seconds, steal_seconds, wait_until)
from robot_imitation.ros.graphs import NodeDecl  # noqa: E402
from robot_imitation.ros.launcher import ProcessDied, ProcessGroup, composable  # noqa: E402
from robot_imitation.nodes.common import to_sec  # noqa: E402
from robot_imitation.nodes.episode_runner import Spinner  # noqa: E402
from robot_imitation.sim.env import ImitationEnv  # noqa: E402
from robot_imitation.sim.experts import make_expert  # noqa: E402
from robot_imitation.sim.tasks import TaskSim  # noqa: E402

BRIDGE = "mujoco_bridge"
WARMUP_S = 3.0          # before each measured window
STARTUP_TIMEOUT_S = 60.0  # for the nodes to come up and the control loop to close

# ============================================================================ monitoring

@dataclass
class DiagSample:
    """One /diagnostics status of the bridge: its stamp (bridge wall clock) and its values."""

    stamp: float
    values: dict

    def __getitem__(self, key: str) -> float:
        return float(self.values[key])

def rate(first: DiagSample, last: DiagSample, key: str) -> float:
    """Per-second increase of a counter between two samples."""
    dt = last.stamp - first.stamp
    return (last[key] - first[key]) / dt if dt > 0 else 0.0

class BridgeMonitor(Node):
    """Collects the bridge's /diagnostics (and calls its services: ``ServiceCaller``)."""

    def __init__(self):
        super().__init__("bridge_throughput_monitor")
        self._lock = threading.Lock()
        self._samples: list[DiagSample] = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{BRIDGE}: simulation":
                sample = DiagSample(to_sec(msg.header.stamp),
                                    {kv.key: kv.value for kv in status.values})
                with self._lock:
                    self._samples.append(sample)

    def samples(self) -> list[DiagSample]:
        with self._lock:
            return list(self._samples)

    def latest(self) -> DiagSample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

@contextlib.contextmanager
def monitoring():
    monitor = BridgeMonitor()
    spinner = Spinner(monitor)
    try:
        yield monitor
    finally:
        spinner.stop()
        monitor.destroy_node()

@contextlib.contextmanager
def bridge_and_expert(phase: str, bridge_params: dict, expert_params: dict,
                      compose: bool = False):
    """The two nodes as processes (``compose``: in one process, ``nodes.container``), logging
    to results/logs/<phase>; always stopped.

    On a failure their logs are printed (after they are stopped, so the logs are complete).
    """
    group = ProcessGroup(RESULTS_DIR / "logs" / phase)
    nodes = [NodeDecl(BRIDGE, BRIDGE, parameters=bridge_params),
             NodeDecl("scripted_expert", "scripted_expert", parameters=expert_params)]
    try:
        with group:
            group.start_graph(nodes, compose=composable(nodes) if compose else ())
            yield group
    except (ProcessDied, BenchmarkError):
        for name in group.procs:
            print(f"----- {phase}: log of {name} -----\n{group.log(name).rstrip()}",
                  file=sys.stderr)
        raise

def watch(group: ProcessGroup, seconds: float) -> None:
    """Wait, checking that the nodes are alive."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        group.check()
        time.sleep(min(0.2, left))

def counter_above(monitor: BridgeMonitor, key: str, value: float = 0.0):
    def ready() -> bool:
        sample = monitor.latest()
        return sample is not None and sample[key] > value
    return ready

# ============================================================================ machine load

class LoadWindow:
    """What else the machine did over a window: the CPU of every process but this one and the
    nodes (kernel threads included), and the time the hypervisor gave to other guests (steal),
    each as a percentage of one CPU. Linux /proc; NaN elsewhere."""

    def __init__(self, pids):
        self.pids = [os.getpid(), *pids]
        self.start = self._sample()

    def _sample(self) -> tuple:
        try:
            own = sum(stat_cpu_seconds(proc_stat(pid), children=True) for pid in self.pids)
            processes, kernel = all_processes_cpu_seconds()
        except (OSError, ValueError, IndexError):
            own = processes = kernel = float("nan")
        return time.monotonic(), own, processes + kernel, steal_seconds()

    def end(self) -> dict:
        (t0, own0, all0, steal0), (t1, own1, all1, steal1) = self.start, self._sample()
        dt = max(t1 - t0, 1e-9)
        return {"others_cpu_percent": ((all1 - all0) - (own1 - own0)) / dt * 100.0,
                "steal_percent": (steal1 - steal0) / dt * 100.0}

# ============================================================================ measurements

class InProcess:
    """The closed loop in this process: gymnasium env and expert, no ROS."""

    def __init__(self, task: str):
        self.env = ImitationEnv(task)
        self.expert = make_expert(self.env.sim)
        self.seed = 0
        self.obs, _ = self.env.reset(seed=self.seed)

    def run_for(self, seconds: float) -> dict:
        ticks = episodes = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            self.obs, _, terminated, truncated, _ = self.env.step(self.expert(self.obs))
            ticks += 1
            if terminated or truncated:
                self.seed += 1
                episodes += 1
                self.obs, _ = self.env.reset(seed=self.seed)
                self.expert.reset()
        return {"window_s": elapsed, "ticks_per_s": ticks / elapsed, "episodes": episodes}

    def close(self) -> None:
        self.env.close()


def set_pause(caller, pause: bool) -> None:
    from std_srvs.srv import SetBool

    resp = caller.call(SetBool, f"/{BRIDGE}/set_pause", SetBool.Request(data=pause), 10.0)
    if not resp.success:
        raise BenchmarkError(f"the bridge refused set_pause {pause}: {resp.message}")


def measure_alternating(task: str, duration: float, rounds: int, substeps: int,
                        compose: bool = False) -> tuple:
    """(lockstep, without ROS, rounds): ``rounds`` pairs of windows, the in-process loop while
    the bridge is paused, then lockstep through ROS; control ticks per second of each.
    ``compose``: the bridge and the expert in one process (``nodes.container``)."""
    from robot_imitation.nodes.common import ServiceCaller

    window = duration / rounds
    local = InProcess(task)
    local.run_for(WARMUP_S)
    bridge = {"task": task, "mode": "lockstep", "auto_reset": True, "cameras": [""], "seed": 0}
    expert = {"task": task, "trigger": "state"}
    pairs = []
    with bridge_and_expert("lockstep_composed" if compose else "lockstep", bridge, expert,
                           compose) as group, monitoring() as monitor:
        wait_until(group, counter_above(monitor, "control_ticks"), "lockstep control ticks",
                   STARTUP_TIMEOUT_S, 0.1)
        watch(group, WARMUP_S)
        caller = ServiceCaller(monitor)
        nodes = [proc.pid for proc in group.procs.values()]
        for _ in range(rounds):
            set_pause(caller, True)
            time.sleep(0.3)  # the tick in flight ends
            load = LoadWindow(nodes)
            without = local.run_for(window)
            without["load"] = load.end()
            set_pause(caller, False)
            watch(group, 1.0)  # the loop closes again
            start = len(monitor.samples())
            load = LoadWindow(nodes)
            watch(group, window + 1.0)  # /diagnostics comes once a second
            lockstep_load = load.end()
            samples = monitor.samples()[start:]
            if len(samples) < 2 or samples[-1].stamp <= samples[0].stamp:
                raise BenchmarkError("no /diagnostics from the bridge during a lockstep window")
            first, last = samples[0], samples[-1]
            ticks = rate(first, last, "control_ticks")
            pairs.append({"lockstep": {"window_s": last.stamp - first.stamp,
                                       "ticks_per_s": ticks,
                                       "episodes": int(last["episode"] - first["episode"]),
                                       "load": lockstep_load},
                          "without_ros": without, "ratio": ticks / without["ticks_per_s"]})
    local.close()

    def summary(key: str) -> dict:
        rates = [p[key]["ticks_per_s"] for p in pairs]
        return {"ticks_per_s": statistics.median(rates),
                "physics_steps_per_s": statistics.median(rates) * substeps,
                "window_s": sum(p[key]["window_s"] for p in pairs),
                "episodes": sum(p[key]["episodes"] for p in pairs)}

    return summary("lockstep"), summary("without_ros"), pairs


def measure_realtime(task: str, seconds: float) -> dict:
    """Achieved real-time factor at a target of 1.0, with the expert on a sim-time timer."""
    bridge = {"task": task, "mode": "realtime", "real_time_factor": 1.0, "auto_reset": True,
              "cameras": [""], "seed": 0}
    expert = {"task": task, "trigger": "timer", "use_sim_time": True}
    with bridge_and_expert("realtime", bridge, expert) as group, monitoring() as monitor:
        wait_until(group, counter_above(monitor, "commands_accepted"),
                   "expert commands accepted by the bridge", STARTUP_TIMEOUT_S, 0.1)
        start = len(monitor.samples())
        watch(group, seconds)
        samples = monitor.samples()[start:]
    if len(samples) < 2:
        raise BenchmarkError(f"{len(samples)} /diagnostics samples in {seconds:g} s of real time")
    first, last = samples[0], samples[-1]
    rtf = [s["real_time_factor"] for s in samples[1:]]  # the first is the counters' baseline
    return {"target_real_time_factor": 1.0, "samples": len(rtf),
            "window_s": last.stamp - first.stamp,
            "real_time_factor_mean": sum(rtf) / len(rtf), "real_time_factor_min": min(rtf),
            "real_time_factor_max": max(rtf),
            "overruns": int(last["overruns"] - first["overruns"]),
            "physics_steps_per_s": rate(first, last, "physics_steps")}

# ============================================================================ report

def report(r: dict) -> str:
    sub = r["substeps"]
    lock, base = r["lockstep"], r["without_ros"]
    lines = [f"Closed-loop control, task {r['task']}: {r['control_rate_hz']:g} Hz control, "
             f"{sub} physics steps per tick; {r['cpus']} CPUs",
             f"  {'':44}{'ticks/s':>10}{'physics steps/s':>18}"]
    for label, ticks in (("lockstep through ROS (median window)", lock["ticks_per_s"]),
                         ("in process, without ROS (median window)", base["ticks_per_s"])):
        lines.append(f"  {label:44}{ticks:10.1f}{ticks * sub:18.0f}")
    ratio = r["ros_over_without_ros"]
    lines.append(f"  {'cost of ROS: through ROS / without ROS':44}{ratio:10.3f}"
                 f"   ({1 / ratio:.2f}x slower; median of the pairs' ratios)")
    pairs = r["pairs"]
    lines.append("  pairs (through ROS / without ROS, ticks/s): " + ", ".join(
        f"{p['lockstep']['ticks_per_s']:.0f}/{p['without_ros']['ticks_per_s']:.0f} = "
        f"{p['ratio']:.3f}" for p in pairs))
    lines.append(f"  (windows: {lock['window_s']:.1f} s through ROS, {lock['episodes']} episodes; "
                 f"{base['window_s']:.1f} s without ROS, {base['episodes']} episodes)")
    lines.append("  machine load in each pair, % of one CPU (other processes' CPU / steal), "
                 "through ROS | without ROS: " + ", ".join(
                     f"{p['lockstep']['load']['others_cpu_percent']:.0f}/"
                     f"{p['lockstep']['load']['steal_percent']:.0f} | "
                     f"{p['without_ros']['load']['others_cpu_percent']:.0f}/"
                     f"{p['without_ros']['load']['steal_percent']:.0f}" for p in pairs))
    comp = r.get("composed")
    if comp:
        lines += ["", "The bridge and the expert in one process (nodes.container), alternating "
                  "with the in-process loop as above:",
                  f"  {'lockstep through ROS, composed (median window)':44}"
                  f"{comp['lockstep']['ticks_per_s']:10.1f}"
                  f"{comp['lockstep']['ticks_per_s'] * sub:18.0f}",
                  f"  {'in process, without ROS (median window)':44}"
                  f"{comp['without_ros']['ticks_per_s']:10.1f}"
                  f"{comp['without_ros']['ticks_per_s'] * sub:18.0f}",
                  f"  {'composed through ROS / without ROS':44}{comp['ratio']:10.3f}"
                  f"   ({1 / comp['ratio']:.2f}x slower; median of the pairs' ratios)",
                  "  pairs: " + ", ".join(
                      f"{p['lockstep']['ticks_per_s']:.0f}/{p['without_ros']['ticks_per_s']:.0f}"
                      f" = {p['ratio']:.3f}" for p in comp["pairs"])]
    rt = r.get("realtime")
    if rt:
        lines += ["",
                  f"Real time, target real_time_factor {rt['target_real_time_factor']:g}, expert "
                  f"on a sim-time timer ({rt['samples']} one-second samples)",
                  f"  {'achieved real_time_factor':44}mean {rt['real_time_factor_mean']:.3f}  "
                  f"min {rt['real_time_factor_min']:.3f}  max {rt['real_time_factor_max']:.3f}",
                  f"  {'overruns':44}+{rt['overruns']} in {rt['window_s']:.1f} s",
                  f"  {'physics steps/s':44}{rt['physics_steps_per_s']:.1f}"]
    return "\n".join(lines)

# ============================================================================ main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="push", help="task to run (default: push)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds measured in lockstep and without ROS (default: 20)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="pairs of windows, without ROS and through ROS in turn (default 3)")
    parser.add_argument("--realtime-seconds", type=float, default=30.0,
                        help="seconds measured in real-time mode (default: 30)")
    parser.add_argument("--skip-realtime", action="store_true",
                        help="leave out the real-time measurement")
    parser.add_argument("--skip-composed", action="store_true",
                        help="leave out the lockstep with the bridge and the expert in one "
                             "process")
    return parser.parse_args(argv)

def run(args: argparse.Namespace) -> dict:
    cfg = TaskSim(args.task).cfg
    substeps = cfg.substeps
    results = {"task": args.task, "control_rate_hz": cfg.control_rate, "substeps": substeps,
               "cpus": os.cpu_count(), "python": platform.python_version(),
               "duration_s": args.duration}
    print(f"[bench] lockstep through ROS (ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}) and "
          f"without ROS, alternating: start-up + {WARMUP_S:g} s warm-up each + {args.rounds} "
          f"pairs of {args.duration / args.rounds:g} s windows", flush=True)
    results["lockstep"], results["without_ros"], results["pairs"] = measure_alternating(
        args.task, args.duration, args.rounds, substeps)
    results["rounds"] = args.rounds
    results["ros_over_without_ros"] = statistics.median(p["ratio"] for p in results["pairs"])
    results["composed"] = None
    if not args.skip_composed:
        print("[bench] the same with the bridge and the expert in one process", flush=True)
        lock, without, pairs = measure_alternating(args.task, args.duration, args.rounds,
                                                   substeps, compose=True)
        results["composed"] = {"lockstep": lock, "without_ros": without, "pairs": pairs,
                               "ratio": statistics.median(p["ratio"] for p in pairs)}
    results["realtime"] = None
    if not args.skip_realtime:
        print(f"[bench] real time: start-up + {args.realtime_seconds:g} s", flush=True)
        results["realtime"] = measure_realtime(args.task, args.realtime_seconds)
    return results

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        print("bridge_throughput: --rounds must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    return run_with_ros("bridge_throughput", run, report, args, (ProcessDied, BenchmarkError))

if __name__ == "__main__":
    sys.exit(main())
