"""A task given as a file has the spec named after its task (``spec.task_spec_name``): the
commands and graphs that default the spec to the task's read a task file's path as a spec
("myreach.yaml: unknown key 'robot' in the spec"), and `pipeline --task FILE` lost its report
after the whole run."""
import subprocess
import sys

import pytest
import yaml

from robot_imitation.paths import config_file
from robot_imitation.spec import Spec, SpecError, task_spec_name


def task_file(tmp_path, name: str, **changes):
    data = yaml.safe_load(config_file("tasks", "reach").read_text())
    data.update(name=name, **changes)
    path = tmp_path / f"{name}_task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_task_files_spec_is_the_one_named_after_its_task(tmp_path):
    assert task_spec_name("push") == "push" and task_spec_name("push_obstacle") == "push_obstacle"
    assert task_spec_name(task_file(tmp_path, "reach")) == "reach"
    # a variant of a task is observed as the task it varies (as its logic is that task's)
    assert task_spec_name(task_file(tmp_path, "reach_fast", control_rate=10.0)) == "reach"
    assert Spec.for_task(task_file(tmp_path, "reach")).name == "reach"
    with pytest.raises(SpecError, match="unknown task 'nosuch'"):
        task_spec_name("nosuch")
    with pytest.raises(SpecError, match=r"\(pick\): no spec named after it"):
        task_spec_name(task_file(tmp_path, "pick"))


def test_the_graphs_give_the_nodes_the_tasks_spec_not_its_file(tmp_path):
    from robot_imitation.ros.graphs import dagger_graph, record_graph

    path = str(task_file(tmp_path, "reach"))
    recorder = [d for d in record_graph(path, str(tmp_path / "ds"))
                if d.executable == "episode_recorder"][0]
    assert recorder.parameters["spec"] == "reach"
    nodes = dagger_graph(path, "ckpt", dataset=str(tmp_path / "ds"), supervisor={})
    specs = {d.executable: d.parameters.get("spec") for d in nodes}
    assert specs["episode_recorder"] == specs["command_mux"] == "reach", specs
    assert specs["scripted_supervisor"] == "reach", specs


@pytest.mark.ros
def test_record_with_a_task_file(tmp_path):
    path = task_file(tmp_path, "reach")
    proc = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "record",
                           str(tmp_path / "ds"), "--task", str(path), "--episodes", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())["spec"]["name"] == \
        "reach"


@pytest.mark.ros
def test_a_mux_of_a_task_file_takes_its_tasks_spec(procs, probe, tmp_path):
    """The command mux read `task` as its spec when no spec was given: a task file stopped it
    at start (unknown key 'robot' in the spec)."""
    from conftest import wait_for

    path = task_file(tmp_path, "reach")
    proc = procs.start_node("command_mux", params={"task": str(path)})
    wait_for(lambda: probe.node.count_subscribers("/expert/arm_controller/commands") > 0
             or proc.poll() is not None, 60, "the mux to start", procs=procs)
    assert proc.poll() is None, procs.log("command_mux")


def test_the_supervisors_button_is_the_muxs():
    """A supervisor and a mux started with their defaults hold and read the same button."""
    from robot_imitation.nodes.command_mux_node import CommandMux
    from robot_imitation.nodes.supervisor_node import ScriptedSupervisor

    mux = {p.name: p.default for p in CommandMux.PARAMETERS}
    supervisor = {p.name: p.default for p in ScriptedSupervisor.PARAMETERS}
    assert supervisor["button"] == mux["intervention_button"] == 10
