"""What the ROS benchmarks share: run with rclpy, report, write bench/results/<name>.json;
waiting on child processes, CPU times from /proc, argument types."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_with_ros(name: str, run, report, args, errors: tuple) -> int:
    """``run(args)`` inside rclpy, print ``report(results)``, save the results as JSON.

    No rclpy signal handlers: Ctrl-C stays a KeyboardInterrupt, and the children are stopped
    by the benchmark's process group.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    try:
        results = run(args)
    except errors as exc:
        print(f"[bench] failed: {str(exc).splitlines()[0].rstrip(':')}", file=sys.stderr)
        return 1
    finally:
        rclpy.try_shutdown()
    print()
    print(report(results))
    save_results(name, results)
    return 0


def save_results(name: str, results: dict) -> Path:
    """Write ``results`` to bench/results/<name>.json and say where."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\n[bench] results in {os.path.relpath(out)}")
    return out


class BenchmarkError(RuntimeError):
    """A benchmark that cannot measure (a node not coming up, no data)."""


def wait_until(group, ready, what: str, timeout: float, interval: float = 0.05) -> None:
    """Poll ``ready()`` until true, checking that the ``ProcessGroup``'s children live."""
    deadline = time.monotonic() + timeout
    while not ready():
        group.check()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"no {what} within {timeout:g} s")
        time.sleep(interval)


def proc_stat(pid) -> list[str]:
    """Fields 3 and on of /proc/<pid>/stat (proc_pid_stat(5)): fields[i] is field i + 3."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rpartition(")")[2].split()  # the name may hold spaces


CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(fields: list[str], children: bool = False) -> float:
    """utime + stime of ``proc_stat`` fields (``children``: + cutime + cstime)."""
    return sum(int(v) for v in fields[11:15 if children else 13]) / CLK_TCK


PF_KTHREAD = 0x00200000  # in the flags of /proc/<pid>/stat: a kernel thread

def all_processes_cpu_seconds() -> tuple[float, float]:
    """CPU time of (the processes, with the children they have waited for; kernel threads).

    A process's time moves to its parent's cutime/cstime when it is reaped, so the difference
    of two sums counts the processes that ended in between too. (/proc/stat's per-tick
    accounting under-counts the short, frequent wake-ups of a 1 kHz publisher.)
    """
    processes = kernel = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = proc_stat(entry.name)
                if int(fields[6]) & PF_KTHREAD:
                    kernel += stat_cpu_seconds(fields, children=False)
                else:
                    processes += stat_cpu_seconds(fields, children=True)
            except (OSError, IndexError, ValueError):  # ended meanwhile
                pass
    return processes, kernel


def steal_seconds() -> float:
    """Time the hypervisor ran something else while this machine's CPUs had work (/proc/stat's
    steal, summed over the CPUs): a virtual machine's share of a busy host. NaN without it."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
        return int(fields[8]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value
