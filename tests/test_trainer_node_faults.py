"""The trainer node's faults found by an audit, each as a process over real DDS: Ctrl-C during a
long evaluation (the process aborted), an empty list given at start (the first ~/train killed
the node), an unknown task (accepted, then the run failed), cpu_threads of one run kept by the
next."""
import os
import re
import signal
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from std_srvs.srv import Trigger

from conftest import wait_for

pytestmark = pytest.mark.ros

PROGRESS = "/trainer/progress"
# A volatile reader that keeps every progress message it is sent.
READER_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                        history=QoSHistoryPolicy.KEEP_LAST)
TINY = {"batch_size": 32, "hidden": [32, 32], "device": "cpu", "seed": 1, "cpu_threads": 1,
        "eval_every": 0, "eval_episodes": 0, "log_every": 10}


@pytest.fixture(scope="module")
def reach_dataset(tmp_path_factory):
    """Four scripted-expert episodes of reach, recorded through bridge, expert and recorder."""
    from robot_imitation.ros.pipelines import record_demonstrations

    ds = tmp_path_factory.mktemp("trainer_faults") / "reach"
    entries = record_demonstrations(ds, task="reach", episodes=4, mode="lockstep", seed=7)
    assert [e["status"] for e in entries] == ["ok"] * 4
    return ds


def values(msg: DiagnosticArray) -> dict:
    return {kv.key: kv.value for kv in msg.status[0].values}


def start_trainer(procs, probe, params: dict, extra_args=None):
    procs.start_node("trainer", params=params, extra_args=extra_args)
    wait_for(lambda: probe.node.count_publishers(PROGRESS) > 0, 60, "the trainer's progress "
             "publisher", procs=procs)
    client = probe.node.create_client(Trigger, "/trainer/train")
    wait_for(lambda: client.service_is_ready(), 30, "/trainer/train", procs=procs)


def exits_at_start(procs, params: dict, extra_args=None) -> tuple[int, str]:
    """(exit code, log) of a trainer started with ``params`` that is expected to stop."""
    proc = procs.start_node("trainer", params=params, extra_args=extra_args)
    wait_for(lambda: proc.poll() is not None, 60, "the trainer to refuse its start")
    return proc.returncode, procs.log("trainer")


def set_params(probe, **params) -> list:
    req = SetParameters.Request()
    req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
    return probe.call(SetParameters, "/trainer/set_parameters", req).results


def run_to_end(probe, progress, procs, timeout=120) -> dict:
    progress.clear()
    resp = probe.call(Trigger, "/trainer/train")
    assert resp.success, resp.message
    run_dir = resp.message.split(": ", 1)[1]
    wait_for(lambda: progress and values(progress[-1])["run_dir"] == run_dir
             and values(progress[-1])["state"] != "running", timeout, "the run to end",
             procs=procs, interval=0.1)
    return values(progress[-1])


def no_traceback(log: str) -> None:
    for word in ("Traceback", "terminate called", "Fatal Python error", "KeyboardInterrupt"):
        assert word not in log, log


@pytest.mark.slow
def test_ctrl_c_during_a_long_evaluation_stops_it_and_exits_cleanly(
        reach_dataset, tmp_path, procs, probe):
    """SIGINT while the run evaluates (150 closed-loop episodes: seconds) and again, with
    SIGTERM, while the node waits for it: the run stops after the episode under way, marked
    cancelled at its last report, the unfinished evaluation counting for nothing (no
    checkpoint of it), and the node exits 0. It used to wait 5 s and exit with the run's thread
    inside torch ("terminate called without an active exception", exit 134); then it waited
    for the whole evaluation, which can take minutes."""
    out = tmp_path / "runs"
    # 20 steps, then the only evaluation (at the end); a report at step 10
    start_trainer(procs, probe, {"dataset": str(reach_dataset), "out": str(out), **TINY,
                                 "steps": 20, "eval_episodes": 150, "task": "reach"})
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")
    resp = probe.call(Trigger, "/trainer/train")
    assert resp.success, resp.message
    run_dir = Path(resp.message.split(": ", 1)[1])
    wait_for(lambda: any(values(m)["step"] == "10" for m in progress), 120, "step 10",
             procs=procs, interval=0.05)

    proc = procs.procs["trainer"]
    os.killpg(proc.pid, signal.SIGINT)  # the rest of the run is the evaluation
    wait_for(lambda: "shutting down: training run" in procs.log("trainer") or
             proc.poll() is not None, 30, "the trainer to say it waits for its run",
             procs=procs)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):  # impatient, or launch's own
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
    code = proc.wait(600)
    log = procs.log("trainer", tail=100_000)
    assert code == 0, log
    no_traceback(log)
    assert f"training cancelled at step 10: {run_dir}" in log, log
    # the evaluation did not finish: none of its checkpoints, no result
    for name in ("best_success", "best_val", "last", "result.json"):
        assert not (run_dir / name).exists(), name


def test_an_empty_list_at_start_is_the_empty_list_or_refused_naming_it(reach_dataset, tmp_path,
                                                                       procs, probe):
    """`sources: []` in a parameter file reached the node as no value: it started, and its
    first ~/train died on "The parameter 'sources' is not initialized" (no answer, exit 1).
    It is now the empty list (every step), and `policy_config: {}` no options; `-p
    hidden:=[]`, which no policy can have, is refused at start in one line naming it."""
    code, log = exits_at_start(procs, {"dataset": str(reach_dataset)},
                               extra_args=["-p", "hidden:=[]"])
    assert code == 1, log
    no_traceback(log)
    assert "parameter hidden=[]: must be a non-empty list of positive integers" in log, log
    assert "trainer ready" not in log, log

    procs.stop("trainer")
    out = tmp_path / "runs"
    # an empty mapping too (rcl takes `{}` only as a section's last key)
    more = tmp_path / "more.yaml"
    more.write_text("trainer:\n  ros__parameters:\n    policy_config: {}\n")
    start_trainer(procs, probe, {"dataset": str(reach_dataset), "out": str(out), **TINY,
                                 "steps": 5, "sources": []},
                  extra_args=["--params-file", str(more)])
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")
    last = run_to_end(probe, progress, procs)
    assert last["state"] == "done", last
    # the node is still there, serving: a second run
    assert run_to_end(probe, progress, procs)["state"] == "done"
    procs.check()
    no_traceback(procs.log("trainer", tail=100_000))


def test_an_unknown_task_or_robot_is_refused_as_the_command_line_refuses_it(
        reach_dataset, tmp_path, procs, probe):
    """`task: nope` was accepted at start and when set, ~/train answered "training started",
    and the run then failed (ModelError). It is refused at start and when set, with the line
    `robot-imitation train --task nope` says; so is an unknown robot. ~/train refuses what the
    command line refuses before training: a task the dataset's spec cannot run on."""
    from robot_imitation.sim.robot import ModelError, RobotConfig
    from robot_imitation.sim.tasks import TaskConfig

    with pytest.raises(ModelError) as task_error:
        TaskConfig.load("nope")
    with pytest.raises(ModelError) as robot_error:
        RobotConfig.load("nope")
    said = str(task_error.value)
    assert "nope" in said

    code, log = exits_at_start(procs, {"dataset": str(reach_dataset), "task": "nope"})
    assert code == 1, log
    no_traceback(log)
    assert said in log and "trainer ready" not in log, log

    procs.stop("trainer")
    start_trainer(procs, probe, {"dataset": str(reach_dataset), "out": str(tmp_path / "runs"),
                                 **TINY, "steps": 5})
    task, robot = set_params(probe, task="nope", robot="nope")
    assert not task.successful and task.reason == said, task
    assert not robot.successful and robot.reason == str(robot_error.value), robot

    # a task whose world the dataset's spec (reach) cannot run in: refused at ~/train
    assert all(r.successful for r in set_params(probe, task="push", eval_episodes=2))
    resp = probe.call(Trigger, "/trainer/train")
    assert not resp.success, resp.message
    assert resp.message.startswith("not training: spec reach needs observation"), resp.message
    assert "task 'push'" in resp.message, resp.message
    assert not list((tmp_path / "runs").glob("run_*"))
    procs.check()
    no_traceback(procs.log("trainer", tail=100_000))


def test_cpu_threads_of_one_run_is_not_kept_by_the_next(reach_dataset, tmp_path, procs, probe):
    """torch.set_num_threads holds for the whole process: a run with cpu_threads 0 (torch's
    default) after one with cpu_threads N trained on N threads."""
    start_trainer(procs, probe, {"dataset": str(reach_dataset), "out": str(tmp_path / "runs"),
                                 **TINY, "steps": 5, "cpu_threads": 0})
    progress = probe.record(DiagnosticArray, PROGRESS, READER_QOS)
    wait_for(lambda: probe.node.count_subscribers(PROGRESS) > 0, 10, "progress matched")

    def threads_of_runs() -> list:
        return [int(n) for n in re.findall(r"training on CPU threads: (\d+)",
                                           procs.log("trainer", tail=100_000))]

    assert run_to_end(probe, progress, procs)["state"] == "done"
    default = threads_of_runs()[-1]
    set_params(probe, cpu_threads=default + 1)
    assert run_to_end(probe, progress, procs)["state"] == "done"
    set_params(probe, cpu_threads=0)
    assert run_to_end(probe, progress, procs)["state"] == "done"
    assert threads_of_runs() == [default, default + 1, default]
    procs.check()
