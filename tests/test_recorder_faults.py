"""The episode recorder's faults found by an audit: settings changed at run time (accepted, then
ignored), a dataset folder gone between episodes (made again without its spec, the index still
listing the lost episodes), a signal while ~/start waits for its topics (honoured only when the
wait ended), and bad dataset paths at start. The recorder as its own process over real DDS."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from conftest import wait_for
from robot_imitation.nodes.common import COMMAND_QOS

REC = "episode_recorder"


def index(dataset: Path) -> list:
    return json.loads((dataset / "index.json").read_text())["episodes"]


def call(probe, name: str, timeout: float = 60.0):
    return probe.call(Trigger, f"/{REC}/{name}", timeout=timeout)


def set_params(probe, **params) -> list:
    """Set the recorder's parameters; the results (successful, reason), one per parameter."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request()
    req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
    return probe.call(SetParameters, f"/{REC}/set_parameters", req).results


@pytest.mark.ros
def test_settings_changed_at_run_time_apply_from_the_next_episode(procs, probe, tmp_path):
    """`operator`, `notes`, `task`, `auto_stop_on_done`, `stop_grace`, `answer_timeout` and
    `discovery_timeout` set at run time were accepted and then ignored: the index kept the start
    values and auto stop never happened. Now a ~/start takes them as they are then, and an
    episode keeps those of its start (a change while it runs is for the next one)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from robot_imitation.nodes.common import LATCHED_QOS

    n = probe.node
    status = n.create_publisher(DiagnosticArray, "/episode/status", LATCHED_QOS)

    def publish(episode: int, done: bool) -> None:
        # no hardware_id: the episode's task is the `task` parameter's
        s = DiagnosticStatus(name="episode", hardware_id="")
        s.values = [KeyValue(key="episode", value=str(episode)), KeyValue(key="seed", value="1"),
                    KeyValue(key="success", value="true"),
                    KeyValue(key="done", value=str(done).lower())]
        status.publish(DiagnosticArray(status=[s]))

    publish(1, False)
    ds = tmp_path / "ds"
    procs.start_node(REC, params={
        "dataset": str(ds), "topics": ["/episode/status", "/test/late"], "task": "t0",
        "operator": "alice", "notes": "given at start", "auto_stop_on_done": False,
        "discovery_timeout": 5.0})
    wait_for(lambda: n.count_subscribers("/episode/status") >= 2, 30, "recorder subscribed",
             procs=procs)
    # discovery_timeout: the next ~/start waits that long (/test/late has no publisher yet)
    assert all(r.successful for r in set_params(probe, discovery_timeout=0.5))
    resp = call(probe, "start")
    assert not resp.success and "within 0.5 s" in resp.message, resp.message

    results = set_params(probe, operator="bob", notes="after the change", task="t1",
                         auto_stop_on_done=True, stop_grace=0.1, answer_timeout=1.0,
                         discovery_timeout=30.0)
    assert all(r.successful for r in results), results
    late = n.create_publisher(Float64MultiArray, "/test/late", COMMAND_QOS)
    resp = call(probe, "start")
    assert resp.success, resp.message
    publish(8, False)
    late.publish(Float64MultiArray(data=[1.0]))
    publish(8, True)
    wait_for(lambda: index(ds)[0]["status"] != "recording", 30,
             "the auto stop (auto_stop_on_done set at run time)", procs=procs)
    first = index(ds)[0]
    assert (first["status"], first["operator"], first["notes"], first["task"]) == \
        ("ok", "bob", "after the change", "t1"), first

    # a change while an episode runs is for the next one: this one still stops on done
    assert call(probe, "start").success
    results = set_params(probe, operator="carol", notes="", auto_stop_on_done=False)
    assert all(r.successful for r in results), results
    publish(9, False)
    late.publish(Float64MultiArray(data=[2.0]))
    publish(9, True)
    wait_for(lambda: index(ds)[1]["status"] != "recording", 30,
             "the auto stop of the episode started with it", procs=procs)
    assert call(probe, "start").success
    resp = call(probe, "stop")
    assert resp.success, resp.message
    entries = index(ds)
    assert [(e["status"], e["operator"], e["notes"]) for e in entries] == [
        ("ok", "bob", "after the change"), ("ok", "bob", "after the change"),
        ("ok", "carol", "")], entries
    # what cannot change while the node runs is refused, with the reason
    refused = set_params(probe, dataset=str(tmp_path / "other"))
    assert not refused[0].successful and "read-only" in refused[0].reason, refused
    procs.check()


@pytest.mark.ros
def test_a_dataset_folder_gone_between_episodes_refuses_the_start(procs, probe, tmp_path):
    """The dataset folder deleted or moved between episodes: the next ~/start made the folder
    again (without dataset.yaml) and an index listing the lost episode as ok. Now the start is
    refused with the reason, nothing is written anywhere, and the recorder stays up: with the
    folder put back, the next start records into it."""
    pub = probe.node.create_publisher(Float64MultiArray, "/test/x", COMMAND_QOS)
    ds = tmp_path / "ds"
    procs.start_node(REC, params={"dataset": str(ds), "topics": ["/test/x"]})

    def record() -> None:
        resp = call(probe, "start")
        assert resp.success, resp.message
        pub.publish(Float64MultiArray(data=[1.0]))
        resp = call(probe, "stop")
        assert resp.success, resp.message

    record()
    moved = tmp_path / "moved"
    ds.rename(moved)
    resp = call(probe, "start")
    assert not resp.success, resp.message
    assert f"the dataset folder {ds} is gone" in resp.message, resp.message
    assert not ds.exists()  # nothing made again
    procs.check()
    moved.rename(ds)  # put back: the recorder goes on in it
    record()
    assert [(e["name"], e["status"]) for e in index(ds)] == [
        ("episode_000000", "ok"), ("episode_000001", "ok")]

    shutil.rmtree(ds)
    resp = call(probe, "start")
    assert not resp.success and f"the dataset folder {ds} is gone" in resp.message, resp.message
    assert not ds.exists()
    # another folder in its place: the recorder's index would list what is not there (said as
    # another folder, or, where the new folder got the old one's inode, as the index gone)
    ds.mkdir()
    resp = call(probe, "start")
    assert not resp.success, resp.message
    assert "another folder" in resp.message or "lost its index.json" in resp.message, \
        resp.message
    assert not list(ds.iterdir())
    resp = call(probe, "stop")
    assert not resp.success and "no episode" in resp.message, resp.message
    procs.check()


def test_a_dataset_yaml_or_index_gone_refuses_the_start(tmp_path):
    """The dataset's dataset.yaml (its spec), or its index.json, removed since the recorder
    opened it: a start is refused, naming it, and writes nothing."""
    from robot_imitation.recording.recorder import DatasetWriter, Recorder, RecorderError
    from robot_imitation.spec import Spec

    ds = tmp_path / "ds"
    recorder = Recorder(DatasetWriter(ds, Spec.load("reach")))
    topics = {"/test/x": "std_msgs/msg/Float64MultiArray"}
    assert recorder.start(topics) == "episode_000000"
    assert recorder.stop(True)["status"] == "ok"
    (ds / "dataset.yaml").unlink()
    before = sorted(p.name for p in ds.iterdir()), (ds / "index.json").read_text()
    with pytest.raises(RecorderError, match="lost its dataset.yaml"):
        recorder.start(topics)
    assert (sorted(p.name for p in ds.iterdir()), (ds / "index.json").read_text()) == before
    assert not recorder.recording
    # and the index of the episodes recorded gone (the folder emptied, or made anew on the
    # same inode): refused too, not an index listing episodes that are not there
    ds2 = tmp_path / "ds2"
    recorder = Recorder(DatasetWriter(ds2))
    assert recorder.start(topics) == "episode_000000"
    assert recorder.stop(True)["status"] == "ok"
    shutil.rmtree(ds2 / "episode_000000")
    (ds2 / "index.json").unlink()
    with pytest.raises(RecorderError, match="lost its index.json"):
        recorder.start(topics)
    assert not list(ds2.iterdir())


@pytest.mark.ros
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_start_waiting_for_its_topics(procs, probe, tmp_path, sig):
    """SIGINT while ~/start waited for a topic's publisher (discovery_timeout up to 600 s) was
    honoured only when the wait ended, and a second Ctrl-C was ignored. Now the start ends at
    the signal, answered as refused with the reason, and the recorder exits 0 as on any
    Ctrl-C."""
    procs.start_node(REC, params={"dataset": str(tmp_path / "ds"),
                                  "topics": ["/test/nobody"], "discovery_timeout": 0.0})
    proc = procs.procs[REC]
    # one answered start first: the recorder's answers on ~/start reach this client from then
    # on (a server may see a request before its answer's reader is matched; an answer sent
    # just before the process ends could then never arrive)
    resp = call(probe, "start")
    assert not resp.success and "within 0.0 s" in resp.message, resp.message
    assert all(r.successful for r in set_params(probe, discovery_timeout=600.0))
    answer: dict = {}

    def start() -> None:
        try:
            answer["resp"] = probe.caller.call(Trigger, f"/{REC}/start", timeout=120.0)
        except TimeoutError as exc:
            answer["error"] = str(exc)

    caller = threading.Thread(target=start, daemon=True)
    caller.start()
    # The recorder says when its ~/start begins to wait: the signal comes during the wait.
    # (The recorder before this fix said nothing: the signal then came 20 s into the call.)
    deadline = time.monotonic() + 20.0
    while "~/start: waiting up to 600.0 s" not in procs.log(REC) and \
            time.monotonic() < deadline:
        procs.check()
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    try:
        code = proc.wait(60)  # the wait had 600 s to go
    except subprocess.TimeoutExpired:
        pytest.fail(f"the recorder still runs 60 s after {sig.name} (its ~/start waits up to "
                    f"600 s for /test/nobody)\n{procs.log(REC)}")
    caller.join(60)
    log = procs.log(REC)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "resp" in answer, (answer, log)
    resp = answer["resp"]
    assert not resp.success and "shutting down" in resp.message, resp.message
    assert not (tmp_path / "ds" / "episode_000000").exists()


@pytest.mark.ros
@pytest.mark.parametrize("case", ["empty", "file", "under_a_file"])
def test_a_dataset_path_that_is_no_folder_is_one_line(case, tmp_path):
    """`dataset:=''` was accepted, and episodes went into the working directory; a dataset path
    that is a file said "not writable: File exists". Now each is one fatal line naming the
    value, exit 1, nothing created."""
    from robot_imitation.ros.launcher import NODE_MODULES

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    value, says = {
        "empty": ("''", "parameter dataset='': an empty path"),
        "file": (str(afile), f"dataset folder {afile} is a file, not a folder"),
        "under_a_file": (str(afile / "ds"),
                         f"dataset folder {afile / 'ds'} is not writable: {afile} is a file"),
    }[case]
    try:
        res = subprocess.run([sys.executable, "-m", NODE_MODULES[REC], "--ros-args",
                              "-p", f"dataset:={value}", "-p", "topics:=['/test/x']"],
                             cwd=cwd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"dataset:={value} accepted: the recorder ran (stopped after 120 s)\n"
                    f"{exc.stdout or ''}{exc.stderr or ''}")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out, out
    fatal = [line for line in out.splitlines() if "fatal" in line.lower()]
    assert len(fatal) == 1 and says in fatal[0], out
    assert not list(cwd.iterdir()), list(cwd.iterdir())
    assert afile.read_text() == "not a folder"
