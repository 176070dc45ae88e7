"""Several nodes in one process (``nodes.container``, ROS 2's composition for the suite's
nodes): what may share a process, and a lockstep run through one that ends cleanly."""
import signal

import pytest

from robot_imitation.nodes.container import ContainerError, check_executables
from robot_imitation.ros.graphs import expert_graph, record_graph
from robot_imitation.ros.launcher import _composed, composable


def test_only_nodes_that_can_share_a_process_are_composed():
    check_executables(["mujoco_bridge", "scripted_expert"])
    for given, said in ((["mujoco_bridge", "episode_recorder"], "'episode_recorder' cannot share"),
                        ([], "no node given"),
                        (["policy_node", "policy_node"], "policy_node given twice")):
        with pytest.raises(ContainerError, match=said):
            check_executables(given)
    nodes = record_graph("push", "/tmp/unused")
    assert composable(nodes) == [["mujoco_bridge", "scripted_expert"]]  # (not the recorder)
    groups = _composed(nodes, [["scripted_expert", "mujoco_bridge"]])
    assert [[d.name for d in g] for g in groups] == [["mujoco_bridge", "scripted_expert"]]
    for compose, said in (([["mujoco_bridge", "episode_recorder"]], "cannot share a process"),
                          ([["mujoco_bridge", "policy_node"]], "no node 'policy_node'"),
                          ([["mujoco_bridge"], ["mujoco_bridge"]], "in two groups")):
        with pytest.raises(ValueError, match=said):
            _composed(nodes, compose)
    renamed = expert_graph("push", "lockstep")
    renamed[1].namespace = "/robot2"
    with pytest.raises(ValueError, match="renamed or namespaced"):
        _composed(renamed, [["mujoco_bridge", "scripted_expert"]])


def test_container_help_prints_each_nodes_parameters_and_starts_nothing():
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "robot_imitation_entry", "container",
                               *args], capture_output=True, text=True, timeout=120)

    alone = run("--help")
    assert alone.returncode == 0 and "usage: container <executable>" in alone.stdout
    both = run("mujoco_bridge", "scripted_expert", "--help")
    assert both.returncode == 0, both.stderr
    assert both.stdout.startswith("mujoco_bridge: ") and "\nscripted_expert: " in both.stdout
    assert "real_time_factor" in both.stdout and "trigger" in both.stdout
    bad = run("episode_recorder")
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "[container] fatal: 'episode_recorder' cannot share a process (the composable nodes: "
        "mujoco_bridge, scripted_expert, policy_node, command_mux, scripted_supervisor)")


@pytest.mark.ros
def test_a_composed_bridge_and_expert_run_episodes_and_stop_cleanly(tmp_path):
    """The bridge in lockstep and the scripted expert in one process run episodes to their
    end, seeded as asked; a SIGINT ends the process with exit code 0 and no traceback."""
    from robot_imitation.nodes.episode_runner import run_episodes
    from robot_imitation.ros.graph import SimGraph
    from robot_imitation.ros.launcher import ProcessGroup

    with SimGraph(join=True) as graph:  # (the session's domain, conftest.py)
        group = ProcessGroup(tmp_path / "logs", env=graph.env)
        try:
            (proc,) = group.start_graph(expert_graph("reach", "lockstep", seed=4, cameras=[""]),
                                        compose=[["mujoco_bridge", "scripted_expert"]])
            import rclpy

            rclpy.init(context=(ctx := rclpy.context.Context()), domain_id=graph.domain)
            try:
                outcomes = run_episodes(2, context=ctx, seed=10, alive=group.check)
            finally:
                ctx.try_shutdown()
            assert [o.seed for o in outcomes] == [10, 11] and all(o.ticks > 5 for o in outcomes)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0, group.log("mujoco_bridge+scripted_expert")
        finally:
            group.stop()
    log = group.log("mujoco_bridge+scripted_expert")
    assert "Traceback" not in log, log
