"""The trainer node as a process over real DDS: ~/train, ~/progress, the latched ~/checkpoint,
refusals, failed runs and ~/cancel."""
import math
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from conftest import wait_for
from robot_imitation.nodes.common import LATCHED_QOS

pytestmark = pytest.mark.ros

PROGRESS = "/trainer/progress"
CHECKPOINT = "/trainer/checkpoint"
# A volatile reader that keeps every progress message it is sent.
READER_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                        history=QoSHistoryPolicy.KEEP_LAST)
SMALL = {"steps": 300, "batch_size": 64, "hidden": [64, 64], "eval_every": 150,
         "eval_episodes": 2, "device": "cpu", "seed": 1,
         "cpu_threads": 1}  # one thread: no oversubscription when the machine is busy


@pytest.fixture(scope="module")
def reach_dataset(tmp_path_factory):
    """Eight scripted-expert episodes of reach, recorded through bridge, expert and recorder."""
    from robot_imitation.ros.pipelines import record_demonstrations

    ds = tmp_path_factory.mktemp("trainer") / "reach"
    entries = record_demonstrations(ds, task="reach", episodes=8, mode="lockstep", seed=5)
    assert [e["status"] for e in entries] == ["ok"] * 8
    return ds


def values(msg: DiagnosticArray) -> dict:
    assert len(msg.status) == 1
    return {kv.key: kv.value for kv in msg.status[0].values}


def states(msgs) -> list:
    return [values(m)["state"] for m in msgs]


def start_trainer(procs, probe, params: dict):
    procs.start_node("trainer", params=params)
    wait_for(lambda: probe.node.count_publishers(PROGRESS) > 0, 30, "the trainer's progress "
             "publisher", procs=procs)
    client = probe.node.create_client(Trigger, "/trainer/train")
    wait_for(lambda: client.service_is_ready(), 30, "/trainer/train", procs=procs)


@pytest.mark.slow
def test_train_publishes_progress_and_a_latched_checkpoint(reach_dataset, tmp_path, procs,
                                                            probe):
    from robot_imitation.learning.checkpoint import load_checkpoint
    from robot_imitation.spec import Spec

    out = tmp_path / "runs"
    start_trainer(procs, probe, {"dataset": str(reach_dataset), "out": str(out),
                                 "steps": 5, "log_every": 50})
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")
    # parameters are set at runtime, as a client would, then training is asked for
    probe.set_params("trainer", **SMALL)
    resp = probe.call(Trigger, "/trainer/train")
    assert resp.success, resp.message
    assert resp.message.startswith("training started: ")
    run_dir = Path(resp.message.split(": ", 1)[1])
    assert run_dir.parent == out and run_dir.name.startswith("run_")

    refused = probe.call(Trigger, "/trainer/train")
    assert not refused.success
    assert "already running" in refused.message and str(run_dir) in refused.message

    wait_for(lambda: progress and states(progress)[-1] != "running", 90,
             "the run to end", procs=procs, interval=0.1)
    last = values(progress[-1])
    assert last["state"] == "done", last
    assert progress[-1].status[0].message == "done"
    assert last["run_dir"] == str(run_dir)
    assert int(last["step"]) == int(last["total"]) == 300
    steps = [int(values(m)["step"]) for m in progress]
    assert steps == sorted(steps) and len(set(steps)) >= 3, steps
    assert set(states(progress[:-1])) == {"running"}
    running = [values(m) for m in progress if values(m)["state"] == "running"]
    assert any(v["step"] == "150" and math.isfinite(float(v["val_loss"])) for v in running)
    assert math.isfinite(float(last["train_loss"])) and math.isfinite(float(last["val_loss"]))
    assert 0.0 <= float(last["success_rate"]) <= 1.0
    best = Path(last["checkpoint"])
    assert best.is_absolute() and best.parent == run_dir.resolve()
    assert (run_dir / "last").is_dir() and (run_dir / "log.csv").is_file()

    # a subscriber that appears after the run still gets the best checkpoint (transient local)
    late = probe.record(String, CHECKPOINT, LATCHED_QOS, key="late")
    wait_for(lambda: late, 10, "the latched checkpoint path")
    assert late[-1].data == str(best)
    policy, meta = load_checkpoint(late[-1].data, runtime_spec=Spec.load("reach"))
    assert meta["training"]["steps"] == 300 and meta["training"]["hidden"] == [64, 64]
    assert meta["task"] == "reach"
    # and the latest progress (done) is latched too
    late_progress = probe.record(DiagnosticArray, PROGRESS, LATCHED_QOS, key="late_progress")
    wait_for(lambda: late_progress, 10, "the latched progress")
    assert values(late_progress[-1])["state"] == "done"
    procs.check()


@pytest.mark.slow
def test_the_trainer_node_trains_a_generative_family(reach_dataset, tmp_path, procs, probe):
    """`policy: act` with options as a YAML mapping, the chunk left at the family's default:
    the node trains an act checkpoint the policy node can load."""
    from robot_imitation.learning.checkpoint import load_checkpoint
    from robot_imitation.spec import Spec

    start_trainer(procs, probe, {"dataset": str(reach_dataset), "out": str(tmp_path / "runs"),
                                 "policy": "act", "policy_config": "{dim_model: 32, heads: 2}",
                                 "steps": 40, "batch_size": 32, "eval_every": 0,
                                 "eval_episodes": 0, "device": "cpu", "cpu_threads": 1})
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")
    resp = probe.call(Trigger, "/trainer/train")
    assert resp.success, resp.message
    wait_for(lambda: progress and states(progress)[-1] != "running", 120,
             "the run to end", procs=procs, interval=0.1)
    last = values(progress[-1])
    assert last["state"] == "done", last
    policy, meta = load_checkpoint(last["checkpoint"], runtime_spec=Spec.load("reach"))
    assert meta["type"] == "act" and policy.type_name == "act"
    assert policy.cfg.dim_model == 32 and policy.cfg.heads == 2 and policy.cfg.chunk == 8
    procs.check()


def test_failures_are_reported_and_the_node_keeps_serving(reach_dataset, tmp_path, procs,
                                                          probe):
    out = tmp_path / "runs"
    start_trainer(procs, probe, {"dataset": str(tmp_path / "no_such_dataset"), "out": str(out),
                                 **SMALL})
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")

    # a path that does not exist: refused at once, and state failed naming the path
    missing = tmp_path / "no_such_dataset"
    resp = probe.call(Trigger, "/trainer/train")
    assert not resp.success and str(missing) in resp.message
    wait_for(lambda: progress and states(progress)[-1] == "failed", 10, "state failed",
             procs=procs)
    assert str(missing) in values(progress[-1])["error"]
    assert str(missing) in progress[-1].status[0].message

    # a folder that is no dataset: the run starts, then fails in the background
    empty = tmp_path / "empty"
    empty.mkdir()
    probe.set_params("trainer", dataset=str(empty))
    progress.clear()
    resp = probe.call(Trigger, "/trainer/train")
    assert resp.success, resp.message
    wait_for(lambda: progress and states(progress)[-1] == "failed", 30, "state failed",
             procs=procs)
    error = values(progress[-1])["error"]
    assert str(empty) in error and "dataset.yaml" in error, error
    assert not list(out.glob("run_*")), "a failed run leaves no empty run folder"

    # bad settings are refused by the parameter service
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request()
    req.parameters = [Parameter("head", value="transformer").to_parameter_msg(),
                      Parameter("steps", value=0).to_parameter_msg()]
    results = probe.call(SetParameters, "/trainer/set_parameters", req).results
    assert not any(r.successful for r in results)

    # still alive and serving: a long run, cancelled between steps
    probe.set_params("trainer", dataset=str(reach_dataset), steps=1_000_000, eval_every=0,
                     eval_episodes=0, log_every=10)
    progress.clear()
    resp = probe.call(Trigger, "/trainer/train")
    assert resp.success, resp.message
    wait_for(lambda: progress and int(values(progress[-1])["step"]) > 0, 60,
             "training steps", procs=procs)
    resp = probe.call(Trigger, "/trainer/cancel")
    assert resp.success, resp.message
    wait_for(lambda: states(progress)[-1] == "cancelled", 30, "state cancelled", procs=procs)
    assert 0 < int(values(progress[-1])["step"]) < 1_000_000
    assert not probe.call(Trigger, "/trainer/cancel").success  # nothing left to cancel
    # no checkpoint was announced by any of these runs
    checkpoint = probe.record(String, CHECKPOINT, LATCHED_QOS, key="checkpoint")
    wait_for(lambda: probe.node.count_publishers(CHECKPOINT) > 0, 10, "checkpoint publisher")
    time.sleep(1.0)  # time for a latched sample to arrive, were there one
    assert not checkpoint
    procs.check()
