"""Simulated runs on a private ROS graph: the domain a run picks is one nothing on this machine
uses, two runs never pick the same one, and a run's nodes and processes talk on it only."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from robot_imitation.ros.graph import SimGraph, domain_in_use
from robot_imitation.nodes.common import COMMAND_QOS, STATE_QOS

pytestmark = pytest.mark.ros

SHELL_DOMAIN = int(os.environ["ROS_DOMAIN_ID"])  # this test session's (see conftest)


def test_a_domain_with_a_participant_is_in_use_and_never_picked(ros):
    # the test process holds a participant on the session's domain (the `ros` fixture)
    import rclpy

    node = rclpy.create_node("graph_probe")
    try:
        assert domain_in_use(SHELL_DOMAIN)
        with SimGraph() as a, SimGraph() as b:
            assert a.private and b.private
            assert a.domain != b.domain  # the first run's lock keeps the second away
            assert SHELL_DOMAIN not in (a.domain, b.domain)
            assert not domain_in_use(a.domain)
            assert a.env["ROS_DOMAIN_ID"] == str(a.domain)
            assert a.env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
            assert f"domain {a.domain}" in a.describe()
            # a context on the private domain makes it busy for every later run
            other = rclpy.create_node("on_private", context=a.context)
            try:
                assert domain_in_use(a.domain)
            finally:
                other.destroy_node()
        joined = SimGraph(join=True)
        assert not joined.private and joined.domain == SHELL_DOMAIN
        joined.close()
    finally:
        node.destroy_node()


def processes_on(domain: int) -> list[str]:
    """'pid: command line' of each process of this machine whose ROS_DOMAIN_ID is ``domain``
    (this test process aside)."""
    out = []
    for proc in os.listdir("/proc"):
        if not proc.isdigit() or int(proc) == os.getpid():
            continue
        try:
            env = open(f"/proc/{proc}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{proc}/cmdline", "rb").read().replace(b"\0", b" ")
        except OSError:   # gone, or not ours to read
            continue
        if f"ROS_DOMAIN_ID={domain}".encode() in env:
            out.append(f"{proc}: {cmd.decode(errors='replace')[:200]}")
    return out


def watch_demo(probe, tmp_path, *extra, until=None) -> tuple[str, int]:
    """Run `robot-imitation demo` (3 reach episodes in real time) while the probe watches the
    shell's graph; returns its output and the most publishers of /joint_states seen there at
    once. Meanwhile the probe publishes arm commands of its own there: a run that listened would
    take them. With ``until`` (given that count), the run has many episodes and is stopped with
    Ctrl-C once ``until`` holds: how long discovery takes depends on the machine's load, so the
    run lasts as long as the probe needs, not a fixed number of episodes (up to 120 s)."""
    intruder = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands",
                                           COMMAND_QOS)
    episodes = "3" if until is None else "1000"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_imitation.cli", "demo", "--task", "reach", "--episodes",
         episodes, "--mode", "realtime", "--out", str(tmp_path / "demo"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None:
            seen = max(seen, probe.node.count_publishers("/joint_states"))
            intruder.publish(Float64MultiArray(data=[9.0] * 7))
            if until is not None and (until(seen) or time.monotonic() > deadline):
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
                break
            time.sleep(0.02)
    finally:
        probe.node.destroy_publisher(intruder)
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read()
    if until is not None:   # stopped by Ctrl-C, as a user would: 130 and one line, no traceback
        assert proc.returncode == 130 and "Traceback" not in out, out
        return out, seen
    assert proc.returncode == 0, out
    # --seed's default, 1000: episode k gets seed 1000 + k (the bridge's own first episode,
    # begun when it came up, is not one of them)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [e["seed"] for e in results["per_episode"]] == [1000, 1001, 1002]
    return out, seen


@pytest.mark.slow
def test_a_simulated_run_stays_off_the_shells_graph_unless_asked(probe, tmp_path):
    """`robot-imitation demo` publishes nothing on the shell's domain (and its expert still
    solves every episode: no stray command reached its robot); with --join-ros-graph its robot
    shows there (to watch it in RViz or Foxglove)."""
    # a node an earlier test of this session killed stays in DDS discovery until its lease
    # runs out (Fast DDS: 20 s): the count starts from none
    deadline = time.monotonic() + 40
    while probe.node.count_publishers("/joint_states"):
        if time.monotonic() > deadline:   # who: the nodes, and the processes on the domain
            nodes = [f"{i.node_namespace.rstrip('/')}/{i.node_name}"
                     for i in probe.node.get_publishers_info_by_topic("/joint_states")]
            pytest.fail(f"/joint_states publishers left on the shell's graph 40 s on: {nodes}; "
                        f"processes on domain {SHELL_DOMAIN}: {processes_on(SHELL_DOMAIN)}")
        time.sleep(0.2)
    states = probe.record(JointState, "/joint_states", STATE_QOS)
    poses = probe.record(PoseStamped, "/ee_pose", STATE_QOS)
    out, seen = watch_demo(probe, tmp_path)
    assert "simulation on a private ROS graph: domain" in out, out
    assert f"domain {SHELL_DOMAIN}," not in out
    assert "success 3/3" in out, out
    assert seen == 0 and not states and not poses, "the run published on the shell's graph"

    # joined: the run goes on until the probe both sees its robot and hears it (discovery of a
    # writer and its first sample reaching the probe can be seconds apart on a loaded machine)
    out, seen = watch_demo(probe, tmp_path / "joined", "--join-ros-graph",
                           until=lambda seen: seen >= 1 and len(states) >= 1)
    assert f"simulation on the shell's ROS graph (domain {SHELL_DOMAIN})" in out, out
    assert seen >= 1 and states, "--join-ros-graph: the run's robot is not on the shell's graph"
