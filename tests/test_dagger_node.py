"""The DAgger node as a process over real DDS: ~/run, ~/progress per iteration, the latched
~/checkpoint, refusals, failed runs, ~/cancel, and no process left behind at shutdown."""
import json
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from conftest import wait_for
from robot_imitation.nodes.common import LATCHED_QOS, STATE_QOS

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PROGRESS = "/dagger/progress"
CHECKPOINT = "/dagger/checkpoint"
# A volatile reader that keeps every progress message it is sent.
READER_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                        history=QoSHistoryPolicy.KEEP_LAST)
# BC and one DAgger iteration, as short as it gets. Few training steps: on the CPU, training
# this tiny a dataset to a very small loss gets far slower per step (denormal numbers).
SMALL = {"task": "reach", "bc_episodes": 4, "iterations": 1, "episodes_per_iteration": 2,
         "eval_episodes": 3, "variant": "mixture", "schedule": "constant", "beta0": 0.5,
         "train_steps": 40,
         "device": "cpu", "seed": 3,
         "cpu_threads": 1}  # one thread: the run's nodes need the other cores


def values(msg: DiagnosticArray) -> dict:
    assert len(msg.status) == 1
    return {kv.key: kv.value for kv in msg.status[0].values}


def states(msgs) -> list:
    return [values(m)["state"] for m in msgs]


def start_dagger(procs, probe, params: dict) -> list:
    """The node started with ``params``; returns the list its progress messages go to."""
    procs.start_node("dagger_node", name="dagger", params=params)
    wait_for(lambda: probe.node.count_publishers(PROGRESS) > 0, 30, "the dagger node's progress "
             "publisher", procs=procs)
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")
    client = probe.node.create_client(Trigger, "/dagger/run")
    wait_for(lambda: client.service_is_ready(), 30, "/dagger/run", procs=procs)
    return progress


def processes_of(run_dir: Path) -> list:
    """Live processes whose command line names ``run_dir`` (the run's nodes: their parameter
    files lie in it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and str(run_dir).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_run_reports_each_iteration_and_latches_the_final_checkpoint(tmp_path, procs, probe):
    out = tmp_path / "runs"
    progress = start_dagger(procs, probe, {**SMALL, "out": str(out)})
    diagnostics = probe.record(DiagnosticArray, "/diagnostics", READER_QOS)
    # the run's simulated robot is on a private graph: nothing of it reaches this one
    states_here = probe.record(JointState, "/joint_states", STATE_QOS)
    resp = probe.call(Trigger, "/dagger/run")
    assert resp.success, resp.message
    assert resp.message.startswith("dagger started: ")
    run_dir = Path(resp.message.split(": ", 1)[1])
    assert run_dir.parent == out and run_dir.name.startswith("run_")

    refused = probe.call(Trigger, "/dagger/run")
    assert not refused.success
    assert "already running" in refused.message and str(run_dir) in refused.message

    wait_for(lambda: progress and states(progress)[-1] != "running", 300, "the run to end",
             procs=procs, interval=0.1, log_dir=run_dir)
    last = values(progress[-1])
    assert last["state"] == "done", last
    assert progress[-1].status[0].message == "done"
    assert last["run_dir"] == str(run_dir) and last["iterations"] == "1"
    assert set(states(progress[:-1])) == {"running"}
    stages = [values(m)["stage"] for m in progress]
    assert any(s.startswith("recording 4 expert demonstrations of reach") for s in stages)
    # each demonstration reported as it is recorded (a stage of its own)
    assert [s.split(":")[0] for s in stages if s.startswith("demonstration ")] == \
        [f"demonstration {k}/4" for k in range(1, 5)], stages
    assert any(s.startswith("expert: 3/3") for s in stages), stages
    assert any(s.startswith("simulation on a private ROS graph: domain") for s in stages)
    assert not states_here, "the run's bridge published on the node's graph"

    # one report per iteration: BC (0), then DAgger 1 on more labels
    rows = {}
    for m in progress:
        v = values(m)
        if v["iteration"] and v["iteration"] not in rows:
            rows[v["iteration"]] = v
    assert list(rows) == ["0", "1"], list(rows)
    bc, dagger = rows["0"], rows["1"]
    assert int(dagger["labels"]) > int(bc["labels"]) > 0
    assert bc["beta"] == "nan" and float(dagger["beta"]) == 0.5
    for row in (bc, dagger):
        rate, low, high = (float(row[k]) for k in ("success_rate", "ci95_low", "ci95_high"))
        assert 0.0 <= low <= rate <= high <= 1.0
        assert Path(row["checkpoint"]).is_dir()
    assert bc["checkpoint"] != dagger["checkpoint"]

    res = json.loads((run_dir / "dagger.json").read_text())
    assert [r["iteration"] for r in res["iterations"]] == [0, 1] and "stopped" not in res
    assert [r["labels"] for r in res["iterations"]] == [int(bc["labels"]), int(dagger["labels"])]
    assert res["config"]["task"] == "reach" and res["config"]["train"]["steps"] == 40
    final = Path(res["iterations"][-1]["checkpoint"]).resolve()
    assert last["checkpoint"] == dagger["checkpoint"] == str(final)

    # the final checkpoint is latched for subscribers that come later (policy nodes)
    late = probe.record(String, CHECKPOINT, LATCHED_QOS, key="late")
    wait_for(lambda: late, 10, "the latched checkpoint path")
    assert late[-1].data == str(final) and final.is_dir()
    assert any(st.name == "dagger: dagger" and {kv.key: kv.value for kv in st.values}
               .get("state") == "done" for m in diagnostics for st in m.status)
    assert not processes_of(run_dir), "the run's processes are stopped when it ends"
    procs.check()


def test_bad_settings_fail_cancel_stops_and_no_process_outlives_the_node(tmp_path, procs,
                                                                           probe):
    out = tmp_path / "runs"
    progress = start_dagger(procs, probe, {**SMALL, "task": "no_such_task", "out": str(out)})

    # an unknown task: refused at once, state failed naming it, no run folder
    resp = probe.call(Trigger, "/dagger/run")
    assert not resp.success and "unknown task 'no_such_task'" in resp.message, resp.message
    wait_for(lambda: progress and states(progress)[-1] == "failed", 10, "state failed",
             procs=procs)
    assert "unknown task 'no_such_task'" in values(progress[-1])["error"]
    assert "unknown task 'no_such_task'" in progress[-1].status[0].message
    assert not out.exists() or not any(out.iterdir())

    # bad settings are refused by the parameter service
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request()
    req.parameters = [Parameter("schedule", value="cubic").to_parameter_msg(),
                      Parameter("device", value="tpu").to_parameter_msg(),
                      Parameter("beta0", value=1.5).to_parameter_msg()]
    results = probe.call(SetParameters, "/dagger/set_parameters", req).results
    assert not any(r.successful for r in results)

    # a setting that fails in the middle of a run: state failed with the error, in the background
    probe.set_params("dagger", task="reach", bc_episodes=2, device="cuda:7")
    progress.clear()
    resp = probe.call(Trigger, "/dagger/run")
    assert resp.success, resp.message
    wait_for(lambda: progress and states(progress)[-1] != "running", 120, "the run to fail",
             procs=procs, interval=0.1)
    last = values(progress[-1])
    assert last["state"] == "failed" and "cuda" in last["error"].lower(), last
    assert progress[-1].status[0].message == last["error"]

    # still serving: a run cancelled at once stops after the demonstrations
    probe.set_params("dagger", device="cpu", iterations=3)
    progress.clear()
    resp = probe.call(Trigger, "/dagger/run")
    assert resp.success, resp.message
    run_dir = Path(resp.message.split(": ", 1)[1])
    resp = probe.call(Trigger, "/dagger/cancel")
    assert resp.success and "iteration boundary" in resp.message, resp.message
    wait_for(lambda: progress and states(progress)[-1] != "running", 120, "the run to stop",
             procs=procs, interval=0.1, log_dir=run_dir)
    assert states(progress)[-1] == "cancelled", values(progress[-1])
    res = json.loads((run_dir / "dagger.json").read_text())
    assert res["stopped"] is True and res["iterations"] == []
    assert len(json.loads((run_dir / "data" / "expert" / "index.json").read_text())
               ["episodes"]) == 2
    assert not probe.call(Trigger, "/dagger/cancel").success  # nothing left to cancel
    checkpoint = probe.record(String, CHECKPOINT, LATCHED_QOS, key="checkpoint")
    wait_for(lambda: probe.node.count_publishers(CHECKPOINT) > 0, 10, "checkpoint publisher")
    time.sleep(1.0)  # time for a latched sample to arrive, were there one
    assert not checkpoint, "no run finished, so no checkpoint was announced"

    # the node stopped in the middle of a run takes the run's processes with it
    # (on the node's own graph, where this test can see the run's helper node)
    probe.set_params("dagger", bc_episodes=50, join_ros_graph=True)
    resp = probe.call(Trigger, "/dagger/run")
    assert resp.success, resp.message
    run_dir = Path(resp.message.split(": ", 1)[1])
    # (the recorder's, and one for the bridge and its controllers: ``compose``, the default)
    wait_for(lambda: len(processes_of(run_dir)) >= 2, 60, "the run's processes", procs=procs,
             log_dir=run_dir)
    # the run's helper node in this process did not take the name given to the node
    wait_for(lambda: ("episode_runner", "/") in probe.node.get_node_names_and_namespaces(), 10,
             "the run's episode runner")
    assert probe.node.get_node_names_and_namespaces().count(("dagger", "/")) == 1
    codes = procs.stop("dagger")
    wait_for(lambda: not processes_of(run_dir), 5, "the run's processes to end")
    # a clean exit: no traceback from two threads stopping the run's processes at once, no
    # abort from the run's thread meeting the interpreter's teardown
    log = procs.log("dagger", tail=100_000)
    assert codes["dagger"] == 0, (codes, log[-3000:])
    for bad in ("Traceback", "Fatal Python error", "terminate called"):
        assert bad not in log, log[-3000:]
