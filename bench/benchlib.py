"""What the ROS benchmarks share: run with rclpy, report, write bench/results/<name>.json."""
from __future__ import annotations

import json
import os
import sys
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
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\n[bench] results in {os.path.relpath(out)}")
    return 0
