"""A Foxglove Studio layout for the suite's episodes, made from a spec.

Panels: per action field, its command (against the measured joint when the action is relative
to a joint observation: element i against that observation's i-th joint); every joint position;
the end effector's position when the spec observes it; a camera panel per image field; the
episode's status (the bridge's ``/episode/status`` outcome over time, and its values) and, for
DAgger data, the command mux's executed source. Open a recorded episode (its MCAP file) in
Foxglove and import the layout (``config/foxglove/robot_imitation.json``, made from
``push_image``; ``robot-imitation layout --spec <spec>`` writes one for another spec).

The plots take ``/joint_states`` elements by index: the bridge publishes its joints in the
robot's order, which is the order the built-in specs list them in.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..paths import write_text_whole
from ..spec import Spec

STATUS_TOPIC = "/episode/status"
SOURCE_TOPIC = "/command_mux/source"
LAYOUT_FILE = "foxglove/robot_imitation.json"


def _plot(title: str, paths: list) -> dict:
    return {"foxglovePanelTitle": title,
            "paths": [{"value": value, "label": label, "enabled": True,
                       "timestampMethod": "receiveTime"} for value, label in paths],
            "showXAxisLabels": True, "showYAxisLabels": True, "showLegend": True,
            "legendDisplay": "floating", "showPlotValuesInLegend": True, "isSynced": True,
            "xAxisVal": "timestamp", "sidebarDimension": 240}


def _split(panels: list, direction: str):
    """A balanced binary layout tree of ``panels`` (ids), split evenly."""
    if len(panels) == 1:
        return panels[0]
    half = len(panels) // 2
    return {"first": _split(panels[:half], direction),
            "second": _split(panels[half:], direction),
            "direction": direction, "splitPercentage": round(100 * half / len(panels), 1)}


def layout_for(spec: Spec) -> dict:
    """The layout (Foxglove's JSON) for episodes recorded with ``spec``."""
    config: dict = {}
    plots, side = [], []
    joints = {f.key: f for f in spec.observations if f.field == "position" and f.joints}
    for f in spec.actions:
        if f.field != "data":
            continue
        ref = joints.get(f.relative_to)
        paths = []
        for i in range(f.size):
            paths.append((f"{f.topic}.data[{i}]", f"{f.key}[{i}] command"))
            if ref is not None and i < len(ref.joints):
                paths.append((f"{ref.topic}.position[{i}]", f"{ref.joints[i]} measured"))
        pid = f"Plot!{f.key}"
        config[pid] = _plot(f"{f.key}: command against state", paths)
        plots.append(pid)
    for f in joints.values():
        pid = f"Plot!{f.key}"
        config[pid] = _plot(f"{f.key} ({f.topic})", [
            (f"{f.topic}.position[{i}]", j) for i, j in enumerate(f.joints)])
        plots.append(pid)
    for f in spec.observations:
        if f.field == "pose":
            base = f"{f.topic}.pose.position" if f.type.endswith("Stamped") else \
                f"{f.topic}.position"
            pid = f"Plot!{f.key}"
            config[pid] = _plot(f"{f.key} position", [(f"{base}.{c}", c) for c in "xyz"])
            plots.append(pid)
            break  # the first pose (the end effector in the built-in specs)
    for f in spec.image_observations:
        pid = f"Image!{f.key}"
        config[pid] = {"foxglovePanelTitle": f.key, "imageMode": {"imageTopic": f.topic}}
        side.append(pid)
    config["StateTransitions!episode"] = {
        "foxglovePanelTitle": "episode status and executed source",
        "paths": [{"value": f"{STATUS_TOPIC}.status[0].message", "timestampMethod":
                   "receiveTime", "label": "outcome"},
                  {"value": f"{SOURCE_TOPIC}.data", "timestampMethod": "receiveTime",
                   "label": "executed source (DAgger)"}],
        "isSynced": True}
    config["RawMessages!episode"] = {"foxglovePanelTitle": "episode status",
                                     "topicPath": f"{STATUS_TOPIC}.status[0].values",
                                     "expansion": "all"}
    side += ["StateTransitions!episode", "RawMessages!episode"]
    return {"configById": config, "globalVariables": {}, "userNodes": {},
            "linkedGlobalVariables": [],
            "playbackConfig": {"speed": 1, "messageOrder": "receiveTime"},
            "layout": {"first": _split(plots, "column"), "second": _split(side, "column"),
                       "direction": "row", "splitPercentage": 62}}


def write_layout(spec: Spec, path) -> Path:
    """Writes ``spec``'s layout to ``path`` whole or not at all (a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_whole(path, json.dumps(layout_for(spec), indent=2) + "\n")
