"""What the nodes that run long jobs on request (trainer, dagger) share: run folders, device
settings, and their progress as one diagnostic status."""
from __future__ import annotations

import re
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
LEVELS = {"running": DiagnosticStatus.OK, "done": DiagnosticStatus.OK,
          "cancelled": DiagnosticStatus.WARN, "failed": DiagnosticStatus.ERROR}


def number(value) -> str:
    return "nan" if value is None else f"{float(value):.6g}"


def new_run_dir(out: Path) -> Path:
    """A new ``out/run_<timestamp>`` folder (suffixed when that name is taken)."""
    base = Path(out) / time.strftime("run_%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}_{n}")
    path.mkdir(parents=True)
    return path


def progress_message(node, job: str, status: dict, values: dict, keys: list) -> DiagnosticArray:
    """One status named "<node>: <job>": level and message from ``status`` (state, error),
    values ``keys`` from ``values`` (plus ``error`` when there is one)."""
    keys = list(keys)
    if "error" in status:
        values = {**values, "error": status["error"]}
        keys.append("error")
    message = status.get("error") if status["state"] == "failed" else status["state"]
    msg = DiagnosticArray(status=[DiagnosticStatus(
        level=LEVELS[status["state"]], name=f"{node.get_name()}: {job}", message=message,
        hardware_id="", values=[KeyValue(key=k, value=values[k]) for k in keys])])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


def publish_safely(node, publisher, msg) -> None:
    """Publish, unless the node is shutting down under the job."""
    try:
        publisher.publish(msg)
    except Exception as exc:  # noqa: BLE001 - the node is shutting down under the run
        node.get_logger().debug(f"not published: {exc}")
