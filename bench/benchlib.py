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


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value
