"""The Foxglove Studio layout shipped with the package, and the ones made for other specs."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from robot_imitation.data.foxglove import layout_for
from robot_imitation.paths import available, config_dir
from robot_imitation.spec import Spec

SHIPPED = config_dir() / "foxglove" / "robot_imitation.json"


def leaves(tree) -> list:
    if isinstance(tree, str):
        return [tree]
    assert set(tree) == {"first", "second", "direction", "splitPercentage"}
    assert tree["direction"] in ("row", "column") and 0 < tree["splitPercentage"] < 100
    return leaves(tree["first"]) + leaves(tree["second"])


def topics_of(layout: dict) -> set:
    found = set()
    for panel in layout["configById"].values():
        for path in panel.get("paths", []):
            found.add(re.match(r"(/[\w/]+?)\.", path["value"]).group(1))
        if "topicPath" in panel:
            found.add(re.match(r"(/[\w/]+?)\.", panel["topicPath"]).group(1))
        if "imageMode" in panel:
            found.add(panel["imageMode"]["imageTopic"])
    return found


def test_the_shipped_layout_is_the_one_made_from_push_image():
    """One source of truth: the file in config/ is what ``layout_for`` makes (regenerate it
    with ``robot-imitation layout --out config/foxglove/robot_imitation.json --overwrite``)."""
    shipped = json.loads(SHIPPED.read_text())
    assert shipped == layout_for(Spec.load("push_image"))
    assert {"Plot!arm", "Plot!joint_pos", "Image!front_image", "StateTransitions!episode",
            "RawMessages!episode"} <= set(shipped["configById"])
    # the plots index /joint_states: the bridge publishes the joints in the spec's order
    from robot_imitation.sim.tasks import TaskSim

    joints = list(Spec.load("push_image").observations[0].joints)
    assert list(TaskSim("push").robot.joint_names)[:len(joints)] == joints
    arm = [p["value"] for p in shipped["configById"]["Plot!arm"]["paths"]]
    assert arm[:4] == ["/arm_controller/commands.data[0]", "/joint_states.position[0]",
                       "/arm_controller/commands.data[1]", "/joint_states.position[1]"]


@pytest.mark.parametrize("name", available("specs"))
def test_every_panel_is_placed_and_reads_a_recorded_topic(name):
    spec = Spec.load(name)
    layout = layout_for(spec)
    placed = leaves(layout["layout"])
    assert sorted(placed) == sorted(layout["configById"])
    recorded = set(spec.topics()) | {"/episode/status", "/command_mux/source"}
    assert topics_of(layout) <= recorded
    assert {f.topic for f in spec.image_observations} <= topics_of(layout)


def test_the_layout_command(tmp_path):
    out = tmp_path / "reach.json"
    run = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "layout", "--spec",
                          "reach", "--out", str(out)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text()) == layout_for(Spec.load("reach"))
    run = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "layout", "--spec",
                          "nope", "--out", str(tmp_path / "x.json")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1 and "nope" in run.stderr and not Path(tmp_path / "x.json").exists()


def test_the_layout_command_keeps_an_existing_file(tmp_path):
    """A layout arranged in Foxglove and saved under the default name is not replaced by the
    next ``layout``: one line, exit 1 (as any refused ``--out``), the file as it was;
    ``--overwrite`` replaces it."""
    out = tmp_path / "mine.json"
    out.write_text('{"mine": true}\n')
    cmd = [sys.executable, "-m", "robot_imitation.cli", "layout", "--spec", "reach", "--out",
           str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().count("\n") == 0 and f"--out {out} exists" in run.stderr
    assert "--overwrite" in run.stderr and out.read_text() == '{"mine": true}\n'
    run = subprocess.run(cmd[:-2] + ["--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "is a folder" in run.stderr, run.stderr
    run = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text()) == layout_for(Spec.load("reach"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json"]  # no temporary left
