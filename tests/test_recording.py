"""The episode recorder as its own process: real DDS, real bags read back by an independent reader
(``mcap`` + ``mcap-ros2-support``), crash recovery, disk full."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap_ros2.reader import read_ros2_messages
from rclpy.duration import Duration
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from conftest import expert_answer, wait_for
from robot_imitation.nodes.common import COMMAND_QOS, SENSOR_QOS, STATE_QOS

REC = "episode_recorder"
TOPICS = ["/test/joints", "/test/camera", "/test/command"]


def read_counts(bag_dir: Path) -> Counter:
    """Per-topic message counts, read with the independent MCAP reader (sqlite3 bags: with
    plain SQL)."""
    counts = Counter()
    for path in sorted(bag_dir.glob("*.mcap")):
        for m in read_ros2_messages(str(path)):
            counts[m.channel.topic] += 1
    for topic, _ in read_db3(bag_dir):
        counts[topic] += 1
    return counts


def read_db3(bag_dir: Path, topic: str | None = None) -> list:
    """(topic, CDR bytes) of a sqlite3 bag in time order, with plain SQL (no bag library)."""
    out = []
    for path in sorted(bag_dir.glob("*.db3")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        out += conn.execute("SELECT t.name, m.data FROM messages m JOIN topics t ON "
                            "m.topic_id = t.id ORDER BY m.timestamp, m.id").fetchall()
        conn.close()
    return [(t, bytes(d)) for t, d in out if topic is None or t == topic]


def metadata_counts(bag_dir: Path) -> dict:
    info = yaml.safe_load((bag_dir / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return {t["topic_metadata"]["name"]: t["message_count"]
            for t in info["topics_with_message_count"]}


def index(dataset: Path) -> list:
    return json.loads((dataset / "index.json").read_text())["episodes"]


class Publishers:
    """A test node publishing joint states (reliable), images (best effort) and commands."""

    def __init__(self, probe):
        n = probe.node
        self.joints = n.create_publisher(JointState, TOPICS[0], STATE_QOS)
        self.camera = n.create_publisher(Image, TOPICS[1], SENSOR_QOS)
        self.command = n.create_publisher(Float64MultiArray, TOPICS[2], COMMAND_QOS)
        self.sent = Counter()
        self.image = Image(width=160, height=120, encoding="rgb8", step=480)
        self.image.data = np.random.default_rng(0).integers(0, 255, 160 * 120 * 3,
                                                            dtype=np.uint8).tobytes()

    def burst(self, n: int, rate: float = 500.0) -> None:
        for i in range(n):
            js = JointState(name=["a", "b"], position=[float(i), -float(i)])
            self.joints.publish(js)
            self.sent[TOPICS[0]] += 1
            if i % 10 == 0:
                self.camera.publish(self.image)
                self.sent[TOPICS[1]] += 1
            if i % 5 == 0:
                self.command.publish(Float64MultiArray(data=[float(i)]))
                self.sent[TOPICS[2]] += 1
            time.sleep(1.0 / rate)


def start_recorder(procs, probe, dataset, name=REC, **params):
    params = {"dataset": str(dataset), "topics": TOPICS, **params}
    procs.start_node("episode_recorder", name=name, params=params)
    wait_for(lambda: probe.node.count_subscribers(TOPICS[0]) > 0
             or procs.procs[name].poll() is not None, 30, "recorder up")
    procs.check()


def call(probe, name, timeout=30.0, recorder=REC):
    return probe.call(Trigger, f"/{recorder}/{name}", timeout=timeout)


def record_episode(probe, pubs, n: int, recorder=REC) -> None:
    """Start an episode, publish a burst of ``n`` joint states (and the rest), stop and keep."""
    assert call(probe, "start", recorder=recorder).success
    time.sleep(0.2)
    pubs.burst(n)
    time.sleep(0.3)
    assert call(probe, "stop", recorder=recorder).success


@pytest.mark.ros
def test_counts_equal_what_was_published(procs, probe, tmp_path):
    pubs = Publishers(probe)
    start_recorder(procs, probe, tmp_path / "ds")
    resp = call(probe, "start")
    assert resp.success, resp.message
    time.sleep(0.3)
    pubs.burst(600)
    time.sleep(0.5)
    resp = call(probe, "stop")
    assert resp.success, resp.message
    bag = tmp_path / "ds" / "episode_000000"
    assert metadata_counts(bag) == dict(pubs.sent)
    assert read_counts(bag) == pubs.sent
    positions = [m.ros_msg.position[0] for m in read_ros2_messages(
        str(bag / "episode_000000.mcap"), topics=[TOPICS[0]])]
    assert positions == [float(i) for i in range(600)]  # every message, in order
    entry = index(tmp_path / "ds")[0]
    assert entry["status"] == "ok" and entry["counts"] == dict(pubs.sent) == entry["received"]
    assert "written/received" in resp.message
    # The camera's best-effort publisher was matched with a best-effort subscription.
    qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"][0]
           for t in yaml.safe_load((bag / "metadata.yaml").read_text())[
               "rosbag2_bagfile_information"]["topics_with_message_count"]}
    assert qos[TOPICS[1]]["reliability"] == "best_effort"
    assert qos[TOPICS[0]]["reliability"] == "reliable"


BACK_TO_BACK = """
import sys, time
from pathlib import Path
from robot_imitation.paths import ensure_ros_environment
ensure_ros_environment()
import numpy as np, rclpy
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("back_to_back")
qos = QoSProfile(depth=1, history=QoSHistoryPolicy.KEEP_LAST,
                 reliability=QoSReliabilityPolicy.RELIABLE)
pubs = [node.create_publisher(Image, t, qos) for t in ("/test/cam0", "/test/cam1")]
frame = Image(width=640, height=480, encoding="rgb8", step=640 * 3)
frame.data = np.random.default_rng(0).integers(0, 255, 640 * 480 * 3, dtype=np.uint8).tobytes()
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.02)
for k in range(20):
    frame.header.stamp.sec = k
    for pub in pubs:
        pub.publish(frame)
    time.sleep(0.1)
time.sleep(1.0)
"""


@pytest.mark.ros
def test_camera_frames_published_back_to_back_all_arrive_with_the_profile(procs, probe, tmp_path):
    """Two 640x480 cameras published back to back, reliable with a history of one: a frame
    arrives on first delivery or never (a repair comes after the next frame replaced it). With
    the profile config/fastdds/large_data.xml (ROBOT_IMITATION_DDS_PROFILE=large_data) every
    frame arrives; with Fast DDS's default 512 KB shared-memory segment the second frame
    overwrote first ones (profile "off", four runs: 18, 4, 1 and 5 of the 20 first frames
    arrived)."""
    procs.env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    procs.env["ROBOT_IMITATION_DDS_PROFILE"] = "large_data"
    topics = ["/test/cam0", "/test/cam1"]
    procs.start_node("episode_recorder", params={"dataset": str(tmp_path / "ds"),
                                                 "topics": topics})
    procs.start("back_to_back", [sys.executable, "-c", BACK_TO_BACK, str(tmp_path / "go")])
    resp = call(probe, "start")  # waits until both publishers are matched
    assert resp.success, resp.message
    (tmp_path / "go").touch()
    wait_for(lambda: procs.procs["back_to_back"].poll() is not None, 60, "the publisher")
    resp = call(probe, "stop")
    assert resp.success, resp.message
    counts = index(tmp_path / "ds")[0]["counts"]
    assert counts == {t: 20 for t in topics}, resp.message


@pytest.mark.ros
def test_start_waits_for_every_topic(procs, probe, tmp_path):
    pubs = Publishers(probe)
    procs.start_node("episode_recorder", params={
        "dataset": str(tmp_path / "ds"), "topics": TOPICS + ["/test/nobody"],
        "discovery_timeout": 1.0})
    resp = call(probe, "start")
    assert not resp.success and "/test/nobody" in resp.message
    assert "(/test/nobody: no publisher discovered); the nodes this recorder sees: " \
        in resp.message, resp.message
    assert f"/{probe.node.get_name()}" in resp.message.split("recorder sees: ")[1]
    assert pubs.joints.get_subscription_count() == 1  # the others were subscribed meanwhile
    resp = call(probe, "stop")
    assert not resp.success and "no episode" in resp.message


@pytest.mark.ros
def test_starting_asks_again_while_a_topic_is_not_matched_yet(procs, probe, tmp_path):
    """``pipelines.start_recording`` asks the recorder again when a topic was not matched
    within its ``discovery_timeout`` (a slow discovery) and starts once the topic's publisher
    is there, up to its own timeout."""
    import threading

    from robot_imitation.nodes.episode_runner import EpisodeRunner, Spinner
    from robot_imitation.ros.pipelines import start_recording

    Publishers(probe)
    start_recorder(procs, probe, tmp_path / "ds", topics=TOPICS + ["/test/late"],
                   discovery_timeout=1.0)
    late = []
    timer = threading.Timer(2.5, lambda: late.append(probe.node.create_publisher(
        Float64MultiArray, "/test/late", COMMAND_QOS)))
    runner = EpisodeRunner()
    spinner = Spinner(runner)
    try:
        timer.start()
        began = time.monotonic()
        name = start_recording(runner, procs, recorder=REC, timeout=30.0)
        assert late, "started before /test/late had a publisher"
        assert name.startswith("episode_") and time.monotonic() - began > 2.0
    finally:
        timer.cancel()
        spinner.stop()
        runner.destroy_node()
    assert call(probe, "stop").success


@pytest.mark.ros
def test_a_start_that_never_matched_says_what_this_process_sees_on_the_topic(procs, probe,
                                                                               tmp_path):
    """When the recorder still saw no publisher of a topic at the end, the error says whether
    the run's own node (another process) sees one: none (nothing publishes it) or which node
    (the recorder's middleware missed it; a CI run once failed so, the expert unseen)."""
    from robot_imitation.nodes.episode_runner import EpisodeRunner, Spinner
    from robot_imitation.ros.pipelines import start_recording

    Publishers(probe)
    start_recorder(procs, probe, tmp_path / "ds", topics=TOPICS + ["/test/nobody"],
                   discovery_timeout=1.0)
    runner = EpisodeRunner()
    spinner = Spinner(runner)
    try:
        with pytest.raises(RuntimeError) as err:
            start_recording(runner, procs, recorder=REC, timeout=1.5)
    finally:
        spinner.stop()
        runner.destroy_node()
    assert "/test/nobody: no publisher discovered" in str(err.value), err.value
    assert "; /test/nobody: this process sees no publisher either (logs in " in str(err.value)


@pytest.mark.ros
def test_discard_and_sqlite3_storage(procs, probe, tmp_path):
    from rosbags.highlevel import AnyReader

    pubs = Publishers(probe)
    start_recorder(procs, probe, tmp_path / "ds", storage="sqlite3")
    assert call(probe, "start").success
    pubs.burst(50)
    assert call(probe, "discard").success
    assert not (tmp_path / "ds" / "episode_000000").exists()
    assert call(probe, "start").success
    time.sleep(0.2)
    pubs.sent.clear()
    pubs.burst(100)
    time.sleep(0.3)
    assert call(probe, "stop").success
    statuses = [e["status"] for e in index(tmp_path / "ds")]
    assert statuses == ["discarded", "ok"]
    bag = tmp_path / "ds" / "episode_000001"
    assert list(bag.glob("*.db3"))
    with AnyReader([bag]) as reader:
        got = Counter(c.topic for c, _, _ in reader.messages())
    assert got == pubs.sent


@pytest.mark.ros
def test_auto_stop_ignores_statuses_received_before_the_start(procs, probe, tmp_path):
    """Statuses that arrive while ~/start is still waiting for its topics are queued and handled
    after it: the `done` of an episode that ran before the start must neither stop the new
    recording nor be part of it; the `done` of an episode running during it stops it."""
    import threading

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from robot_imitation.nodes.common import LATCHED_QOS

    n = probe.node
    status = n.create_publisher(DiagnosticArray, "/episode/status", LATCHED_QOS)

    def publish(episode: int, done: bool) -> None:
        s = DiagnosticStatus(name="episode", hardware_id="synthetic")
        s.values = [KeyValue(key="episode", value=str(episode)), KeyValue(key="seed", value="1"),
                    KeyValue(key="success", value="true"), KeyValue(key="done",
                                                                    value=str(done).lower())]
        status.publish(DiagnosticArray(status=[s]))

    publish(6, True)
    ds = tmp_path / "ds"
    procs.start_node("episode_recorder", params={
        "dataset": str(ds), "topics": ["/episode/status", "/test/late"],
        "auto_stop_on_done": True, "discovery_timeout": 30.0})
    wait_for(lambda: n.count_subscribers("/episode/status") >= 2, 30, "recorder subscribed",
             procs=procs)
    answer = {}
    starter = threading.Thread(target=lambda: answer.update(resp=call(probe, "start")))
    starter.start()
    time.sleep(1.0)  # the recorder is inside ~/start, waiting for /test/late
    publish(7, False)
    publish(7, True)
    time.sleep(0.5)
    late = n.create_publisher(Float64MultiArray, "/test/late", COMMAND_QOS)
    starter.join(35)
    assert answer["resp"].success, answer["resp"].message
    time.sleep(1.5)  # several stop_grace periods: a stop on episode 7 would have happened
    assert [e["status"] for e in index(ds)] == ["recording"]
    publish(8, False)
    late.publish(Float64MultiArray(data=[1.0]))
    publish(8, True)
    wait_for(lambda: index(ds)[0]["status"] != "recording", 10, "the auto stop", procs=procs)
    entry = index(ds)[0]
    assert entry["status"] == "ok"
    bag = ds / "episode_000000"
    episodes = [{kv.key: kv.value for kv in m.ros_msg.status[0].values}["episode"]
                for m in read_ros2_messages(str(bag / "episode_000000.mcap"),
                                            topics=["/episode/status"])]
    assert episodes == ["8", "8"]  # nothing received before the start
    assert read_counts(bag)["/test/late"] == 1


@pytest.mark.ros
def test_a_malformed_episode_status_is_said_and_the_auto_stop_goes_on(procs, probe, tmp_path):
    """Bytes on /episode/status that are no DiagnosticArray (a raw publisher's, a broken
    driver's) were lost in the middleware without a word by the status the recorder stops on,
    and so were such bytes on /diagnostics by ~/start; it now says so (one line for each topic,
    naming it, the type and the size), starts, stops on the next readable `done`, and the bag
    keeps what was published, the bytes as they came."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from robot_imitation.nodes.common import LATCHED_QOS

    status = probe.node.create_publisher(DiagnosticArray, "/episode/status", LATCHED_QOS)

    def publish(done: bool) -> None:
        s = DiagnosticStatus(name="episode", hardware_id="synthetic", values=[
            KeyValue(key="episode", value="3"), KeyValue(key="done", value=str(done).lower())])
        status.publish(DiagnosticArray(status=[s]))

    ds = tmp_path / "ds"
    procs.start_node("episode_recorder", params={
        "dataset": str(ds), "topics": ["/episode/status"], "auto_stop_on_done": True})
    wait_for(lambda: probe.node.count_subscribers("/episode/status") >= 2, 30,
             "recorder subscribed", procs=procs)
    # on /diagnostics too, which ~/start reads (the publishers' matched subscriptions)
    diagnostics = probe.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    wait_for(lambda: diagnostics.get_subscription_count(), 30, "the recorder on /diagnostics")
    diagnostics.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
    time.sleep(0.2)
    assert call(probe, "start").success
    assert "/diagnostics: a message that cannot be deserialized as diagnostic_msgs/msg/" \
        "DiagnosticArray" in procs.log("episode_recorder")
    publish(False)
    status.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
    wait_for(lambda: "/episode/status: a message that cannot be deserialized as "
             "diagnostic_msgs/msg/DiagnosticArray (12 bytes): dropped"
             in procs.log("episode_recorder"), 10, "the recorder's line", procs=procs)
    publish(True)
    wait_for(lambda: index(ds)[0]["status"] != "recording", 10, "the auto stop", procs=procs)
    assert index(ds)[0]["status"] == "ok"
    from mcap.reader import make_reader

    with open(ds / "episode_000000" / "episode_000000.mcap", "rb") as f:
        recorded = [bytes(m.data) for _, c, m in make_reader(f).iter_messages()
                    if c.topic == "/episode/status"]
    assert len(recorded) == 3 and recorded[1] == b"\x00\x01\x00\x00" + b"\xff" * 8
    assert "Traceback" not in procs.log("episode_recorder")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.ros
def test_signal_finishes_the_open_bag(procs, probe, tmp_path, sig):
    pubs = Publishers(probe)
    start_recorder(procs, probe, tmp_path / "ds")
    assert call(probe, "start").success
    time.sleep(0.2)
    pubs.burst(200)
    # every message in the recorder's hands before the signal (a fixed wait lost the last tenth
    # of the burst under a loaded CI run): the reliable topics acknowledged, and the camera's
    # (best effort, published among them) given the time it takes
    for pub in (pubs.joints, pubs.command):
        assert pub.wait_for_all_acked(Duration(seconds=30))
    time.sleep(0.5)
    proc = procs.procs[REC]
    os.killpg(proc.pid, sig)
    assert proc.wait(10) == 0
    bag = tmp_path / "ds" / "episode_000000"
    assert read_counts(bag) == pubs.sent == Counter(metadata_counts(bag))
    # A finished bag, but no finished episode: its own status, never `ok`.
    entry = index(tmp_path / "ds")[0]
    assert entry["status"] == "interrupted" and entry["interrupted"] is True
    custom = yaml.safe_load((bag / "metadata.yaml").read_text())[
        "rosbag2_bagfile_information"]["custom_data"]
    assert custom["robot_imitation.interrupted"] == "True"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.ros
def test_sigkill_keeps_finished_episodes_and_recover_salvages(procs, probe, tmp_path, storage):
    from rclpy.serialization import deserialize_message

    pubs = Publishers(probe)
    ds = tmp_path / "ds"
    # A recorder killed with SIGKILL stays in the DDS graph until its lease runs out, services
    # included: a name of its own keeps a later recorder's clients from taking the dead one's
    # service for the live one's (their first request would go nowhere).
    rec = f"killed_recorder_{storage}"
    start_recorder(procs, probe, ds, name=rec, storage=storage, operator="ada",
                   notes="crash test", task="synthetic")
    record_episode(probe, pubs, 100, recorder=rec)
    finished = read_counts(ds / "episode_000000")
    assert call(probe, "start", recorder=rec).success
    time.sleep(0.2)
    pubs.sent.clear()
    pubs.burst(1500, rate=600.0)  # ~2.5 s: the writer closes a chunk every second
    os.killpg(procs.procs[rec].pid, signal.SIGKILL)
    procs.procs[rec].wait(5)

    crashed = ds / "episode_000001"
    assert not (crashed / "metadata.yaml").exists()
    assert read_counts(ds / "episode_000000") == finished  # untouched
    assert index(ds)[1]["status"] == "recording"

    out = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "recover", str(ds)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "episode_000001: recovered" in out.stdout
    assert (crashed / "metadata.yaml").is_file()
    assert (ds / "episode_000001.incomplete").is_dir()  # the original stays
    got = read_counts(crashed)
    assert Counter(metadata_counts(crashed)) == got
    # Most of the episode survives, and what survives is the start of what was sent, in order.
    assert got[TOPICS[0]] >= 0.4 * pubs.sent[TOPICS[0]], (got, pubs.sent)
    if storage == "mcap":
        positions = [m.ros_msg.position[0] for m in read_ros2_messages(
            str(crashed / "episode_000001.mcap"), topics=[TOPICS[0]])]
    else:
        positions = [deserialize_message(d, JointState).position[0]
                     for _, d in read_db3(crashed, TOPICS[0])]
    assert positions == [float(i) for i in range(len(positions))]
    entry = index(ds)[1]
    assert entry["status"] == "recovered" and entry["counts"] == dict(got)
    # The recovered bag keeps the episode's metadata (from the index) in its custom_data.
    info = yaml.safe_load((crashed / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    custom = info["custom_data"]
    assert custom["robot_imitation.operator"] == "ada"
    assert custom["robot_imitation.notes"] == "crash test"
    assert custom["robot_imitation.task"] == "synthetic"
    assert custom["robot_imitation.recovered"] == "true"
    assert info["relative_file_paths"] == [f"episode_000001.{'mcap' if storage == 'mcap' else 'db3'}"]


# ===================================================================== recover without ROS
def abandoned_episode(ds: Path, name: str, storage: str, flushes: int, per_flush: int = 40):
    """An episode the recorder was killed in: an ``EpisodeBag`` of joint states given up after
    ``flushes`` once-a-second flushes (closed chunks or commits; the rest still in memory), its
    index entry still ``recording``."""
    from rclpy.serialization import serialize_message

    from robot_imitation.recording.bagwriter import EpisodeBag, TypeRegistry
    from robot_imitation.recording.recorder import DatasetWriter

    DatasetWriter(ds).upsert({"name": name, "path": name, "status": "recording",
                              "storage": storage, "operator": "ada"})
    bag = EpisodeBag(ds / name, {TOPICS[0]: "sensor_msgs/msg/JointState"}, TypeRegistry(),
                     storage=storage)
    i = 0
    for _ in range(flushes):
        for _ in range(per_flush):
            bag.write(TOPICS[0], i * 1_000_000, serialize_message(
                JointState(name=["a"], position=[float(i)])))
            i += 1
        bag.flush_chunk(force=True)
    for _ in range(7):  # written after the last flush: lost with the process
        bag.write(TOPICS[0], i * 1_000_000, serialize_message(JointState(name=["a"],
                                                                         position=[-1.0])))
        i += 1
    bag.abort()
    return flushes * per_flush


def positions(bag_dir: Path) -> list:
    from rclpy.serialization import deserialize_message

    if list(bag_dir.glob("*.mcap")):
        return [m.ros_msg.position[0] for p in sorted(bag_dir.glob("*.mcap"))
                for m in read_ros2_messages(str(p))]
    return [deserialize_message(d, JointState).position[0] for _, d in read_db3(bag_dir)]


def broken_episode(ds: Path, name: str, suffix: str, content: bytes) -> None:
    from robot_imitation.recording.recorder import DatasetWriter

    DatasetWriter(ds).upsert({"name": name, "path": name, "status": "recording"})
    (ds / name).mkdir()
    (ds / name / f"{name}{suffix}").write_bytes(content)


@pytest.mark.parametrize("storage, suffix, bad", [
    ("mcap", ".mcap", [b"", b"\x89MCAP0\r\n"]),                  # killed before any chunk
    ("sqlite3", ".db3", [b"", b"not a database " * 300]),           # empty, garbage
], ids=["mcap", "sqlite3"])
def test_recover_salvages_every_episode_it_can_and_reports_the_rest(tmp_path, storage, suffix,
                                                                     bad):
    """Episodes that cannot be salvaged (0-byte or header-only MCAP, an empty or garbage .db3)
    sit between interrupted ones: those after them are recovered too, the bad ones are marked
    `unrecoverable` with the reason, and `recover` exits 1 after saying which and why."""
    ds = tmp_path / "ds"
    kept = {"episode_000000": abandoned_episode(ds, "episode_000000", storage, 2)}
    broken_episode(ds, "episode_000001", suffix, bad[0])
    kept["episode_000002"] = abandoned_episode(ds, "episode_000002", storage, 3)
    broken_episode(ds, "episode_000003", suffix, bad[1])
    kept["episode_000004"] = abandoned_episode(ds, "episode_000004", storage, 1)

    out = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "recover", str(ds)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    entries = {e["name"]: e for e in index(ds)}
    for name, n in kept.items():
        assert f"{name}: recovered {n} messages" in out.stdout
        assert positions(ds / name) == [float(i) for i in range(n)]   # the independent reader
        assert entries[name]["status"] == "recovered" and entries[name]["operator"] == "ada"
    for name in ("episode_000001", "episode_000003"):
        assert entries[name]["status"] == "unrecoverable" and entries[name]["error"]
        assert f"{name}: cannot be salvaged" in out.stderr
        assert (ds / name / f"{name}{suffix}").is_file()   # left as it was
        assert not (ds / f"{name}.incomplete").exists()
    assert "2 episodes could not be salvaged" in out.stderr

    # Again: the recovered episodes' originals (*.incomplete) are no episodes to recover.
    again = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "recover", str(ds)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "recovered" not in again.stdout
    assert sorted(p.name for p in ds.iterdir() if p.name.endswith(".incomplete")) == [
        f"{name}.incomplete" for name in kept]


def test_recover_never_takes_a_dataset_for_a_bag(tmp_path):
    """A stray storage file at the top of a dataset: the dataset is not renamed, the file is not
    made a one-bag dataset; it is reported and left alone, and the episodes are recovered."""
    ds = tmp_path / "ds"
    n = abandoned_episode(ds, "episode_000000", "mcap", 2)
    stray = ds / "copied_by_hand.mcap"
    shutil.copy(ds / "episode_000000" / "episode_000000.mcap", stray)
    out = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "recover", str(ds)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ds.is_dir() and not (tmp_path / "ds.incomplete").exists()
    assert "copied_by_hand.mcap" in out.stderr and "left alone" in out.stderr
    assert stray.is_file() and not (ds / "metadata.yaml").exists()
    assert positions(ds / "episode_000000") == [float(i) for i in range(n)]
    # Nor is a dataset a bag when asked for by name, even without its index.
    (ds / "index.json").unlink()
    from robot_imitation.recording.recover import RecoverError, recover_bag

    with pytest.raises(RecoverError, match="is a dataset folder"):
        recover_bag(ds)
    assert ds.is_dir() and not (tmp_path / "ds.incomplete").exists()


@pytest.mark.ros
def test_unwritable_dataset_folder_is_a_clear_error(procs, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the dataset folder should be")
    procs.start_node("episode_recorder", params={"dataset": str(blocker / "ds"),
                                                 "topics": TOPICS})
    proc = procs.procs["episode_recorder"]
    assert proc.wait(30) == 1
    assert "is not writable" in procs.log("episode_recorder")


@pytest.mark.ros
def test_an_unwritable_index_refuses_the_start_and_the_recorder_survives(procs, probe, tmp_path):
    pubs = Publishers(probe)
    ds = tmp_path / "ds"
    start_recorder(procs, probe, ds)
    record_episode(probe, pubs, 30)
    first = read_counts(ds / "episode_000000")
    # The index is replaced atomically through a temporary file: a folder in its place makes
    # every index write fail (as a full disk or a permission change would, also for root).
    blocker = ds / ".index.json.tmp"
    blocker.mkdir()
    resp = call(probe, "start")
    assert not resp.success and "index" in resp.message and "cannot be written" in resp.message
    assert not (ds / "episode_000001").exists()  # no bag without its index entry
    procs.check()  # the recorder is alive
    blocker.rmdir()
    record_episode(probe, pubs, 30)
    assert [e["status"] for e in index(ds)] == ["ok", "ok"]
    assert read_counts(ds / "episode_000000") == first


@pytest.mark.ros
def test_disk_full_fails_the_episode_and_keeps_earlier_ones(procs, probe, small_disk):
    pubs = Publishers(probe)
    ds = small_disk / "ds"
    start_recorder(procs, probe, ds)
    record_episode(probe, pubs, 50)
    first = read_counts(ds / "episode_000000")
    # Leave ~64 KiB free, then record more than that.
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(bytes(max(0, free - 64 * 1024)))
    assert call(probe, "start").success
    pubs.burst(3000, rate=1000.0)
    time.sleep(1.5)
    resp = call(probe, "stop")
    assert not resp.success
    assert "No space left on device" in resp.message, resp.message
    assert index(ds)[0]["status"] == "ok"
    assert read_counts(ds / "episode_000000") == first  # earlier episode intact
    procs.check()  # the recorder survived, and records again once there is room
    (small_disk / "filler").unlink()
    record_episode(probe, pubs, 20)
    entries = index(ds)
    assert [e["status"] for e in entries] == ["ok", "failed", "ok"]
    assert "No space left on device" in entries[1]["error"]


@pytest.mark.ros
def test_auto_stop_waits_for_the_answers_to_the_final_state(procs, probe, tmp_path):
    """In lockstep the answers to an episode's final state come after its final status (a
    controller may answer a state only once its status is in, as the policy node does). The
    recorder stopped a fixed `stop_grace` (0.25 s) after that status, so a bag held the final
    command or not depending on the load. Here a controller answers the final state 0.6 s after
    its status: the bag holds it (one command per state, the last naming the final state).
    Then one that never answers it: the episode stops `answer_timeout` after the status, kept,
    and the recorder says what the bag lacks. The bridge starts paused: the recorder subscribes
    at ~/start (its simulated clock stands still), and the episode starts only once the
    controller's publishers have matched the recorder too (matching is per side: a command
    published before would miss the bag)."""
    from std_srvs.srv import SetBool

    from conftest import AnswerAfterStatus
    from robot_imitation.pairing import layout_stamp

    procs.start_node("mujoco_bridge", params={"task": "reach", "mode": "lockstep", "seed": 7,
                                              "start_paused": True, "cameras": [""],
                                              "lockstep_republish": 10.0})
    ds = tmp_path / "ds"
    procs.start_node("episode_recorder", params={
        "dataset": str(ds), "spec": "reach", "auto_stop_on_done": True, "use_sim_time": True,
        "answer_timeout": 1.5, "discovery_timeout": 30.0})
    ctl = AnswerAfterStatus(final_delay=0.6)
    try:
        wait_for(lambda: ctl.connected() and probe.node.count_publishers("/joint_states")
                 and probe.node.count_subscribers("/episode/status") >= 2, 30,
                 "the bridge and the recorder", procs=procs)
        assert call(probe, "start").success
        wait_for(lambda: ctl.connected(2), 30, "the commands matched to the recorder too",
                 procs=procs)
        assert probe.call(SetBool, "/mujoco_bridge/set_pause", SetBool.Request(data=False)).success
        wait_for(lambda: index(ds)[0]["status"] != "recording", 60, "the auto stop",
                 procs=procs)
        # the next episode: its final state never answered
        ctl.final_delay = None
        assert call(probe, "start").success
        assert probe.call(Trigger, "/mujoco_bridge/reset").success
        wait_for(lambda: len(ctl.finals) == 2, 60, "the second episode's end", procs=procs)
        t_end = time.monotonic()
        wait_for(lambda: index(ds)[1]["status"] != "recording", 10, "the auto stop",
                 procs=procs)
        waited = time.monotonic() - t_end
    finally:
        ctl.close()
    first, second = index(ds)
    assert first["status"] == second["status"] == "ok", (first, second)
    for e, final, answered in ((first, ctl.finals[0], True), (second, ctl.finals[1], False)):
        mcap = str(ds / e["name"] / f"{e['name']}.mcap")
        states = [m.ros_msg.header.stamp.sec * 10**9 + m.ros_msg.header.stamp.nanosec
                  for m in read_ros2_messages(mcap, topics=["/joint_states"])]
        assert len(states) > 10 and states[-1] == final, (e["name"], len(states), final)
        for topic in ("/arm_controller/commands", "/gripper_controller/commands"):
            named = [layout_stamp(m.ros_msg.layout) for m in read_ros2_messages(
                mcap, topics=[topic])]
            # one answer per state, the final one's only when answered. The paused bridge's
            # first state went out before the start (not in the bag); its answer is in the
            # bag when it came after the start (the controller's timing, under load)
            kept = [s for s in named if s >= states[0]]
            assert kept == states[:len(states) - (not answered)], (e["name"], topic)
            early = named[:len(named) - len(kept)]
            assert len(early) <= 1 and all(s < states[0] for s in early), \
                (e["name"], topic, named[:3], states[:3])
    assert 1.0 < waited < 8.0, waited  # answer_timeout (1.5 s) after the final status
    log = procs.log("episode_recorder")
    assert "no command answering the final state" in log and "/arm_controller/commands" in log


@pytest.mark.ros
def test_an_episode_whose_final_state_never_came_is_kept_incomplete(procs, probe, tmp_path):
    """The messages of an episode's final state are published before its status; when the
    status comes and they never do (lost on the way: a DAgger run under load got a bag 23
    steps short, recorded `ok`, and trained on it), the bag is kept with status `incomplete`,
    saying what it lacks, and the dataset builder leaves it out, saying why. Here a sensor of
    the test stamps a message like each state but the final one."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from std_srvs.srv import SetBool

    from conftest import AnswerAfterStatus
    from robot_imitation.data.dataset import DatasetError, build_dataset
    from robot_imitation.nodes.common import STATE_PUB_QOS, STATUS_QOS
    from robot_imitation.spec import Spec

    spec = Spec.load("reach").to_dict()
    spec["name"] = "reach_marked"
    spec["observations"].append({"key": "marker", "topic": "/test_marker", "field": "pose",
                                 "type": "geometry_msgs/msg/PoseStamped"})
    spec_file = tmp_path / "reach_marked.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    marker = probe.node.create_publisher(PoseStamped, "/test_marker", STATE_PUB_QOS)

    def on_status(msg):
        values = {kv.key: kv.value for kv in msg.status[0].values}
        if values.get("done") == "false":  # every state but an episode's final one
            marker.publish(PoseStamped(header=msg.header))

    probe.node.create_subscription(DiagnosticArray, "/episode/status", on_status, STATUS_QOS)
    procs.start_node("mujoco_bridge", params={"task": "reach", "mode": "lockstep", "seed": 7,
                                              "start_paused": True, "cameras": [""]})
    ds = tmp_path / "ds"
    procs.start_node("episode_recorder", params={
        "dataset": str(ds), "spec": str(spec_file), "auto_stop_on_done": True,
        "use_sim_time": True, "answer_timeout": 1.0, "discovery_timeout": 30.0})
    ctl = AnswerAfterStatus()
    try:
        wait_for(lambda: ctl.connected() and probe.node.count_publishers("/joint_states")
                 and probe.node.count_subscribers("/episode/status") >= 3, 30,
                 "the bridge and the recorder", procs=procs)
        assert call(probe, "start").success
        wait_for(lambda: ctl.connected(2) and marker.get_subscription_count() >= 1, 30,
                 "the commands and the marker matched to the recorder", procs=procs)
        assert probe.call(SetBool, "/mujoco_bridge/set_pause", SetBool.Request(data=False)).success
        wait_for(lambda: ctl.finals and index(ds)[0]["status"] != "recording", 60,
                 "the episode's end and the auto stop", procs=procs)
    finally:
        ctl.close()
    entry = index(ds)[0]
    assert entry["status"] == "incomplete", entry
    assert "no message of the final state" in entry["incomplete"] and \
        "/test_marker" in entry["incomplete"], entry["incomplete"]
    assert entry["counts"]["/test_marker"] == entry["counts"]["/joint_states"] - 1 > 10, entry
    assert "status incomplete" in procs.log("episode_recorder")
    with pytest.raises(DatasetError, match=r"incomplete \(messages of the episode never reached"):
        build_dataset(ds, val_fraction=0.0)
    # asked for, it is built: every step but the final state's (its marker is missing)
    built = build_dataset(ds, val_fraction=0.0, include_interrupted=True)
    assert len(built.episodes) == 1 and len(built.episodes[0]) > 10


@pytest.mark.ros
def test_record_scripted_expert_episodes_through_ros(tmp_path):
    """Bridge, expert and recorder as three processes: every tick's state and command is kept."""
    from robot_imitation.ros.pipelines import record_demonstrations

    ds = tmp_path / "ds"
    entries = record_demonstrations(ds, task="push", episodes=3, mode="lockstep", seed=40)
    assert [e["status"] for e in entries] == ["ok"] * 3
    assert all(e["success"] for e in entries)
    assert [e["seed"] for e in entries] == [40, 41, 42]  # episode k: seed + k
    for e in entries:
        bag = ds / e["name"]
        counts = read_counts(bag)
        assert counts == Counter(e["counts"]) == Counter(e["received"])
        assert counts == Counter(metadata_counts(bag))
        # Lockstep: the state of every tick from 0 to the last, each answered by one command
        # (the answer to the final, done state is recorded but never executed).
        statuses = [m.ros_msg for m in read_ros2_messages(
            str(bag / f"{e['name']}.mcap"), topics=["/episode/status"])]
        final = {kv.key: kv.value for kv in statuses[-1].status[0].values}
        assert final["done"] == "true" and final["seed"] == str(e["seed"])
        ticks = int(final["tick"])
        assert ticks > 10
        for topic in ("/joint_states", "/object_pose", "/arm_controller/commands",
                      "/gripper_controller/commands", "/episode/status"):
            assert counts[topic] == ticks + 1, topic
        custom = yaml.safe_load((bag / "metadata.yaml").read_text())[
            "rosbag2_bagfile_information"]["custom_data"]
        assert custom["robot_imitation.task"] == "push"
        assert custom["robot_imitation.success"] == "True"
        assert custom["robot_imitation.seed"] == str(e["seed"])
    meta = yaml.safe_load((ds / "dataset.yaml").read_text())
    assert meta["spec"]["name"] == "push" and meta["spec_fingerprint"]


@pytest.mark.ros
@pytest.mark.slow
def test_lockstep_recording_keeps_every_camera_frame_due(tmp_path):
    """Lockstep with a camera: every frame due by simulated time is rendered and recorded, so
    the dataset builder keeps every step. The renderer used to replace a frame it had not
    taken yet by the next one: which frames existed depended on the load (63% of the steps of
    100 push_image episodes dropped, "front_image older than 2 periods").

    A bag may also begin with the last frames of the episode before (the bridge's first one,
    before recording): published before ~/start, received after it, as rosbag2 records by
    reception (a CI run: 3 frames stamped before the episode's first state). The builder pairs
    by stamp and never uses them; the frames of the episode itself are exactly those due."""
    from rosbags.highlevel import AnyReader

    from robot_imitation.data.dataset import build_episode
    from robot_imitation.ros.pipelines import record_demonstrations
    from robot_imitation.spec import Spec

    spec = Spec.load("push_image")
    ds = tmp_path / "ds"
    entries = record_demonstrations(ds, task="push", spec="push_image", episodes=2,
                                    mode="lockstep", seed=60)
    assert [e["status"] for e in entries] == ["ok"] * 2
    camera = next(f.topic for f in spec.fields if f.is_image)
    rate = 15.0  # the bridge's camera_rate; ticks at the spec's control rate
    for e in entries:
        bag = ds / e["name"]
        stamps = {"/episode/status": [], camera: []}
        with AnyReader([bag]) as reader:
            conns = [c for c in reader.connections if c.topic in stamps]
            for conn, _, raw in reader.messages(connections=conns):
                stamp = reader.deserialize(raw, conn.msgtype).header.stamp
                stamps[conn.topic].append(stamp.sec * 10**9 + stamp.nanosec)
        states = sorted(stamps["/episode/status"])
        assert len(states) == e["counts"]["/episode/status"]
        due, next_frame = 0, 0.0  # the bridge's schedule, from the episode's first state
        for k in range(len(states)):
            t = k / spec.control_rate
            if t + 1e-9 >= next_frame:
                due += 1
                next_frame = max(next_frame + 1.0 / rate, t)
        mine = [t for t in stamps[camera] if t >= states[0]]
        assert len(mine) == due, (e["counts"], len(mine), due)
        assert set(mine) <= set(states)  # each at a state's instant
        assert len(set(mine)) == len(mine)
        episode = build_episode(bag, spec)
        assert episode.dropped == 0, episode.drop_reasons


def answered_views(dataset_dir) -> tuple[Counter, int]:
    """For each step, how old the view is that its recorded action answers, in whole control
    periods before the step: ``0`` when the action equals the expert's action for the step's
    own observation (the pairing the dataset holds), ``k`` for the messages the recorder held
    ``k`` periods earlier (the bridge publishes its states faster than the control rate, so such
    a view may lie between two steps), ``None`` when no view of messages stamped at or before
    the step explains it (near the bag's first message, where the expert may have acted on messages
    from before the recording, such steps are counted apart). Returns (counts, steps)."""
    from robot_imitation.data.bags import open_bag
    from robot_imitation.data.dataset import _read_streams, build_dataset
    from robot_imitation.sim.experts import make_expert
    from robot_imitation.sim.tasks import TaskSim

    dataset = build_dataset(dataset_dir, cache=False)
    spec = dataset.spec
    period = 1e9 / spec.control_rate
    expert = make_expert(TaskSim("push"))
    views: Counter = Counter()
    for ep in dataset.episodes:
        with open_bag(ep.source) as bag:
            streams = _read_streams(bag, spec)
        # every view the expert can have held: the newest message of each observation topic,
        # after each message in the order of their stamps (the time the bridge published them,
        # before any command answering them)
        arrivals = sorted((t, topic, i) for topic in {f.topic for f in spec.observations}
                          for i, t in enumerate(streams[topic].stamp_ns))
        held, timeline = {}, []
        for t, topic, i in arrivals:
            held[topic] = i
            if all(f.topic in held for f in spec.observations):
                timeline.append((t, dict(held)))
        times = np.asarray([t for t, _ in timeline], dtype=np.int64)
        for i in range(len(ep)):
            # (its commands count their change from the one before: the step's before it)
            before = ep.actions[i - 1] if i else None
            if np.array_equal(expert_answer(expert, {k: v[i] for k, v in ep.obs.items()},
                                            before), ep.actions[i]):
                views[0] += 1
                continue
            t_a = round(ep.t[i] * 1e9)
            age = None
            for j in range(np.searchsorted(times, t_a + 1_000, side="right") - 1, -1, -1):
                t, at = timeline[j]
                view = {f.key: streams[f.topic].values[f.key][at[f.topic]]
                        for f in spec.observations}
                if np.array_equal(expert_answer(expert, view, before), ep.actions[i]):
                    age = max(1, int((t_a - t) // period))
                    break
            if age is None and t_a - times[0] < 3 * period:
                age = "near the bag's start"  # may answer messages from before the recording
            views[age] += 1
    return views, sum(views.values())


@pytest.mark.parametrize("mode", ["lockstep", "realtime"])
@pytest.mark.ros
def test_recorded_pairs_are_the_experts_answers(tmp_path, mode):
    """The expert's command is a known function of the observation. In lockstep the dataset
    must pair each observation with the command issued in answer to it (>= 99.5% of the steps;
    the rest the safety filter changed). In real time a timer-driven expert acts on the newest
    messages it holds, which under load may be a tick or more older than the observation the
    recorder pairs with its command: how often is reported, not asserted (it measures the
    machine), but each command must still answer a view at or before its step (never a later
    observation, another episode's or nothing)."""
    from robot_imitation.ros.pipelines import record_demonstrations

    record_demonstrations(tmp_path / "ds", task="push", episodes=4 if mode == "lockstep" else 2,
                          mode=mode, seed=70)
    views, total = answered_views(tmp_path / "ds")
    print(f"\n{mode}: of {total} steps the action answers the step's observation in {views[0]}, "
          f"views by age {dict(sorted(views.items(), key=str))}")
    assert total > 50
    if mode == "lockstep":
        assert views[0] / total >= 0.995, views
    else:
        assert views[None] / total <= 0.02, views


def test_an_episode_without_a_spec_topic_is_failed_not_ok(tmp_path):
    """A spec topic that delivered nothing during an episode (measured: a busy recorder of
    lockstep camera episodes got no joint states in 2 of 100 episodes, their samples held back
    past the stop): the episode is ``failed`` with the topics named, so the builder skips it
    and says why, instead of an ok episode that no build can use."""
    from rclpy.serialization import serialize_message

    from robot_imitation.data.dataset import _usable_episodes, build_summary
    from robot_imitation.recording.recorder import DatasetWriter, Recorder

    ds = tmp_path / "ds"
    recorder = Recorder(DatasetWriter(ds), log=lambda *a: None)
    topics = {"/test/joints": "sensor_msgs/msg/JointState",
              "/test/command": "std_msgs/msg/Float64MultiArray"}
    command = serialize_message(Float64MultiArray(data=[1.0]))
    joints = serialize_message(JointState(name=["a"], position=[0.5]))
    statuses = []
    for with_joints in (True, False, False):
        recorder.start(topics, required=list(topics) + ["/test/joints"])
        for k in range(3):
            recorder.offer("/test/command", 1_000 + k, command)
            if with_joints:
                recorder.offer("/test/joints", 1_000 + k, joints)
        statuses.append(recorder.stop(keep=True, interrupted=len(statuses) == 2))
    assert [e["status"] for e in statuses] == ["ok", "failed", "interrupted"]
    assert statuses[1]["error"] == "no messages on /test/joints"
    usable, skipped = _usable_episodes(ds)
    assert [e["name"] for e in usable] == ["episode_000000"]
    assert build_summary([], skipped, False)["skipped"] == {
        "status failed": ["episode_000001"],
        "interrupted (stopped before the episode ended)": ["episode_000002"]}


@pytest.mark.ros
def test_a_stalled_recorder_loses_nothing_of_a_lockstep_episode(procs, probe, tmp_path):
    """A recorder that falls behind (a loaded machine; here stopped for a second) must still
    get every message of a lockstep episode: the simulation runs as fast as its controller
    answers, the messages the stopped reader cannot take overflow its transport's queue, and a
    keep-last publisher can send again only what its history still holds. A CI run lost 16 of
    101 commands, 23 of 101 statuses and 22 of 101 clock ticks so (histories of 10, 1 and a
    best-effort clock), while the joint states (history 100) were complete."""
    from std_srvs.srv import SetBool

    from conftest import AnswerAfterStatus

    procs.start_node("mujoco_bridge", params={"task": "push", "mode": "lockstep", "seed": 3,
                                              "start_paused": True, "cameras": [""]})
    ds = tmp_path / "ds"
    # the default answer_timeout (2 s): what the stopped recorder's transport dropped is sent
    # again once the publishers' next heartbeat says it is missing (Fast DDS's default period,
    # 3 s, brought the last poses more than 2 s after the episode's end: that bag ended
    # without them; a DAgger run trained on an episode cut so, under load)
    recorder = procs.start_node("episode_recorder", params={
        "dataset": str(ds), "spec": "push", "auto_stop_on_done": True, "use_sim_time": True,
        "discovery_timeout": 30.0})
    ctl = AnswerAfterStatus()
    try:
        wait_for(lambda: ctl.connected() and probe.node.count_publishers("/joint_states")
                 and probe.node.count_subscribers("/episode/status") >= 2, 30,
                 "the bridge and the recorder", procs=procs)
        state_topics = ("/joint_states", "/object_pose", "/ee_pose", "/goal_pose", "/clock")
        before = {t: probe.node.count_subscribers(t) for t in state_topics}
        assert call(probe, "start").success
        # the recorder subscribes now; its subscriptions must be announced before it stops
        # (stopped with the announcement still queued, the bridge matched them only after
        # the episode, and the bag had no state at all)
        wait_for(lambda: ctl.connected(2) and all(
            probe.node.count_subscribers(t) > before[t] for t in state_topics), 30,
            "the recorder's subscriptions announced", procs=procs)
        time.sleep(0.5)
        os.kill(recorder.pid, signal.SIGSTOP)
        try:
            assert probe.call(SetBool, "/mujoco_bridge/set_pause",
                              SetBool.Request(data=False)).success
            wait_for(lambda: ctl.finals, 60, "the episode's end", procs=procs)
        finally:
            os.kill(recorder.pid, signal.SIGCONT)
        wait_for(lambda: index(ds)[0]["status"] != "recording", 60, "the auto stop",
                 procs=procs)
    finally:
        ctl.close()
    entry = index(ds)[0]
    assert entry["status"] == "ok", entry
    from robot_imitation.pairing import layout_stamp

    stamps, ticks = {}, []
    for m in read_ros2_messages(str(ds / entry["name"] / f"{entry['name']}.mcap")):
        msg, topic = m.ros_msg, m.channel.topic
        if topic == "/clock":
            t = msg.clock.sec * 10**9 + msg.clock.nanosec
        elif topic.endswith("/commands"):
            t = layout_stamp(msg.layout)
        else:
            t = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        stamps.setdefault(topic, []).append(t)
        if topic == "/episode/status":
            values = {kv.key: kv.value for kv in msg.status[0].values}
            ticks.append(int(values["tick"]))
    assert values["done"] == "true"
    states = stamps["/joint_states"]
    # every state from the first recorded to the final one, once, in order
    assert states == sorted(set(states)) and len(states) >= 150, states
    status = stamps["/episode/status"]
    for topic in ("/arm_controller/commands", "/gripper_controller/commands"):
        if stamps[topic][0] not in states:
            # the answer to a state published before the episode, sent after the recorder
            # subscribed
            stamps[topic] = stamps[topic][1:]
    assert ticks == list(range(ticks[0], ticks[-1] + 1)), ticks  # none missing
    assert status == states
    for topic in ("/object_pose", "/arm_controller/commands", "/gripper_controller/commands",
                  "/clock"):
        assert stamps[topic] == states, (topic, len(stamps[topic]), len(states))


def test_the_final_state_is_judged_by_what_was_published_last_not_received_last():
    """A recorder that fell behind gets the samples its transport dropped sent again: a
    repaired sample is received after the ones published after it (they waited in the reader for
    it), and the drain hands messages on in reception order. Judged by the last received, the
    newest state was an earlier one: a stalled recorder's episode was kept ``incomplete``, its
    bag holding every message (3 of 14 runs beside six busy loops)."""
    from robot_imitation.cdr import StateWriter, float64_multi_array
    from robot_imitation.pairing import stamp_label
    from robot_imitation.recording.final_state import FinalState

    w = StateWriter(["j"])
    ms = 1_000_000

    def item(received, topic, data, source):
        return (received, topic, data, {"source_timestamp": source,
                                        "received_timestamp": received})

    def state(k):
        return w.joint_state(0, 50 * ms * k, [0.0], [0.0], [0.0])

    def command(k):
        return float64_multi_array([0.5], stamp_label(50 * ms * k))

    final = FinalState()
    final.start({"/arm_controller/commands": False}, ["/joint_states"])
    # states 0..3 and their answers published at 10k, 10k+1; state 1 and command 1 dropped on
    # the way and repaired: received last (the drain's order), each with its own source stamp
    batch = [item(100 + k, "/joint_states", state(k), 10 * k) for k in (0, 2, 3)]
    batch += [item(110 + k, "/arm_controller/commands", command(k), 10 * k + 1)
              for k in (0, 2, 3)]
    batch += [item(200, "/joint_states", state(1), 10), item(201, "/arm_controller/commands",
                                                             command(1), 11)]
    batch.sort(key=lambda it: it[0])
    final.offer(batch[:4])
    final.offer(batch[4:])
    assert final.reached("/joint_states", 150 * ms)
    assert not final.reached("/joint_states", 200 * ms)
    assert final.answered("/arm_controller/commands", 150 * ms, seen=10**9)
    assert not final.answered("/arm_controller/commands", 200 * ms, seen=0)
    # a topic not awaited is not kept; a new episode starts with nothing taken
    final.offer([item(300, "/ee_pose", state(9), 90)])
    assert not final.reached("/ee_pose", 0)
    final.start({"/arm_controller/commands": False}, ["/joint_states"])
    assert not final.reached("/joint_states", 0)
    # a command naming no state answers one whose status was received before it
    final.offer([item(400, "/arm_controller/commands", float64_multi_array([0.1]), 95)])
    assert final.answered("/arm_controller/commands", 10**12, seen=400)
    assert not final.answered("/arm_controller/commands", 10**12, seen=401)


def test_what_a_latched_publisher_replays_to_a_new_subscription_is_not_recorded():
    """A new transient-local subscription gets the samples its publishers' histories still hold,
    published before it existed; an episode holds what was published from its start on."""
    from robot_imitation.recording.latched import Replays

    def item(received, topic, source):
        return (received, topic, b"", {"source_timestamp": source})

    replays = Replays()
    replays.subscribed("/latched", 1000)
    batch = [item(1, "/latched", 10), item(2, "/other", 5), item(3, "/latched", 999),
             item(4, "/latched", 1000), item(5, "/latched", 0)]  # 0: no source stamp
    assert replays.drop_replayed(batch) == [batch[1], batch[3], batch[4]]
    assert replays.take_skipped() == {"/latched": 2}
    assert replays.take_skipped() == {}


def test_a_command_naming_its_state_is_logged_at_that_state_whatever_the_arrival_order():
    """Log time by publication: a command is logged at the newest state stamp published before
    it, which needs the states published before it to have arrived. A recorder that fell behind
    gets the samples its transport dropped sent again, late and out of order, and a command
    decided before its own state had come was logged at the state before (paired with it by the
    dataset builder). A command naming its state is logged at that state's stamp, at once; one
    naming none keeps the rule."""
    from robot_imitation.cdr import StateWriter, float64_multi_array
    from robot_imitation.pairing import stamp_label
    from robot_imitation.recording.timing import PublicationClock

    w = StateWriter(["j"])
    clock = PublicationClock(["/joint_states"], hold=0.0,
                             answers=["/arm_controller/commands", "/teleop"])
    ms = 1_000_000
    clock.add("/joint_states", 0, w.joint_state(0, 25 * ms, [0.0], [0.0], [0.0]), 5)  # state 0
    assert [t for _, t, _ in clock.ready()] == [25 * ms]
    # state 1 (published at 10) and its answer (11); state 2 (20). State 1 arrives last, as a
    # repaired sample does: the answer is decided once state 2 (published after it) is in
    clock.add("/arm_controller/commands", 0, float64_multi_array([0.5], stamp_label(50 * ms)), 11)
    clock.add("/teleop", 0, float64_multi_array([0.7]), 12)  # names no state
    clock.add("/joint_states", 0, w.joint_state(0, 75 * ms, [0.0], [0.0], [0.0]), 20)
    logged = {topic: t for topic, t, _ in clock.ready()}
    assert logged["/arm_controller/commands"] == 50 * ms  # its state's stamp (was 25 ms)
    # the rule with what has arrived: a command naming no state keeps this limit
    assert logged["/teleop"] == 25 * ms
    clock.add("/joint_states", 0, w.joint_state(0, 50 * ms, [0.0], [0.0], [0.0]), 10)
    assert [t for _, t, _ in clock.ready()] == [50 * ms]
    assert len(clock) == 0


def test_a_message_naming_no_state_waits_for_every_per_state_topic():
    """Log time by publication, a message naming no state (a teleop's command, the mux's
    ~/source): logged at the newest state stamp published before it once every state topic has
    delivered a message published after it. A reliable writer's samples arrive in order, so
    the states before it are all in by then. Deciding as soon as any stamped message published
    after it had come (here a camera frame) logged it at the state before when the states were
    repaired late."""
    from robot_imitation.cdr import StateWriter, float64_multi_array
    from robot_imitation.recording.timing import PublicationClock

    w = StateWriter(["j"])
    ms = 1_000_000

    def state(clock, stamp_ms, src):  # joint state and pose of one state, published at src
        clock.add("/joint_states", 0, w.joint_state(0, stamp_ms * ms, [0.0], [0.0], [0.0]), src)
        clock.add("/pose", 0, w.joint_state(0, stamp_ms * ms, [0.0], [0.0], [0.0]), src + 1)

    clock = PublicationClock(["/joint_states", "/pose", "/camera"], hold=0.0,
                             answers=["/teleop"], per_state=["/joint_states", "/pose"])
    state(clock, 25, 5)
    assert len(clock.ready()) == 2
    # state 1 published at 10/11, the teleop command at 12, a camera frame at 15; the state's
    # samples are repaired and come after the frame
    clock.add("/teleop", 0, float64_multi_array([0.7]), 12)
    clock.add("/camera", 0, w.joint_state(0, 50 * ms, [0.0], [0.0], [0.0]), 15)
    assert [t for t, _, _ in clock.ready()] == ["/camera"]  # the command waits
    state(clock, 50, 10)
    assert [t for t, _, _ in clock.ready()] == ["/joint_states", "/pose"]  # still waits
    state(clock, 75, 20)  # each state topic has a message published after the command
    logged = {topic: t for topic, t, _ in clock.ready()}
    assert logged["/teleop"] == 50 * ms  # its state's (the rule with any later message: 25)
    # the end of an episode: a message after the last state is written at the stop
    clock.add("/teleop", 0, float64_multi_array([0.1]), 30)
    assert clock.ready() == []
    assert [(t, log) for t, log, _ in clock.ready(flush=True)] == [("/teleop", 75 * ms)]
    # without per-state topics (none recorded) the rule is as it was
    clock = PublicationClock(["/joint_states", "/camera"], hold=60.0, answers=["/teleop"])
    clock.add("/joint_states", 0, w.joint_state(0, 25 * ms, [0.0], [0.0], [0.0]), 5)
    clock.add("/teleop", 0, float64_multi_array([0.7]), 12)
    clock.add("/camera", 0, w.joint_state(0, 50 * ms, [0.0], [0.0], [0.0]), 15)
    assert {t: log for t, log, _ in clock.ready()}["/teleop"] == 25 * ms


LATCHED_PUBLISHER = """
import signal, time
import rclpy
from std_msgs.msg import String
from robot_imitation.nodes.common import STATUS_PUB_QOS
rclpy.init()
node = rclpy.create_node("latched_publisher")
pub = node.create_publisher(String, "/test/latched", STATUS_PUB_QOS)
for i in range(50):
    pub.publish(String(data=str(i)))
print("published", flush=True)
go = []
signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
while not go:
    time.sleep(0.01)
for i in range(50, 55):
    pub.publish(String(data=str(i)))
    time.sleep(0.05)
print("live", flush=True)
while rclpy.ok():
    time.sleep(0.1)
"""


@pytest.mark.ros
def test_a_recorder_subscribing_at_the_start_records_no_history(procs, probe, tmp_path):
    """The episode status's publisher keeps a deep history (a recorder that falls behind must
    lose nothing), and a transient-local publisher sends a new subscription that history. A
    recorder subscribing at ~/start recorded every past status it got after the start noted: here
    50 messages published before the episode. The publisher is stopped while the recorder
    subscribes, so its history surely arrives after the start."""
    script = tmp_path / "latched_publisher.py"
    script.write_text(LATCHED_PUBLISHER)
    publisher = procs.start("latched_publisher", [sys.executable, str(script)])
    ds = tmp_path / "ds"
    # simulated time with no /clock: the recorder subscribes only at ~/start
    procs.start_node("episode_recorder", params={"dataset": str(ds), "topics": ["/test/latched"],
                                                 "use_sim_time": True})
    wait_for(lambda: "published" in procs.log("latched_publisher")
             and probe.node.count_publishers("/test/latched")
             and any(name == f"/{REC}/start"
                     for name, _ in probe.node.get_service_names_and_types()), 30,
             "the publisher and the recorder", procs=procs)
    time.sleep(1.0)  # the recorder's participant knows the publisher's by now
    os.kill(publisher.pid, signal.SIGSTOP)
    try:
        assert call(probe, "start").success
    finally:
        os.kill(publisher.pid, signal.SIGCONT)
    time.sleep(1.0)  # the history arrives
    os.kill(publisher.pid, signal.SIGUSR1)  # then 5 live messages
    wait_for(lambda: "live" in procs.log("latched_publisher"), 30, "the live messages",
             procs=procs)
    time.sleep(0.5)
    assert call(probe, "stop").success
    entry = index(ds)[0]
    bag = ds / entry["name"]
    values = [int(m.ros_msg.data) for m in read_ros2_messages(
        str(bag / f"{entry['name']}.mcap"), topics=["/test/latched"])]
    assert values == list(range(50, 55)), values  # the live ones
    assert "/test/latched: 50 message(s) published before the episode, sent from the " \
        "publisher's history when this recorder subscribed: not recorded" in \
        procs.log("episode_recorder")


@pytest.mark.ros
def test_a_start_waits_until_the_publishers_have_matched_the_recorder(procs, probe, tmp_path):
    """Matching is per side. A recorder subscribing at ~/start matches the bridge's publishers
    on its own side at once (its participant knows them), but the bridge's side matches only
    once the bridge's participant has processed the subscription's announcement; a state
    published between the two never reaches the bag (a CI run's first episode lacked its tick-0
    state on every state topic: the bridge was reset right after the start). The bridge reports
    its publishers' matched subscriptions on /diagnostics, and ~/start returns only once they
    count every subscription the recorder sees. Here the bridge is frozen while the recorder
    subscribes: the start waits until it runs again, and its first state is in the bag."""
    import threading

    bridge = procs.start_node("mujoco_bridge", params={
        "task": "reach", "mode": "lockstep", "seed": 3, "start_paused": True, "cameras": [""]})
    ds = tmp_path / "ds"
    # simulated time standing still (the bridge is paused): the recorder subscribes at ~/start
    procs.start_node("episode_recorder", params={
        "dataset": str(ds), "topics": ["/joint_states", "/ee_pose", "/episode/status"],
        "use_sim_time": True, "discovery_timeout": 30.0})
    wait_for(lambda: probe.node.count_publishers("/joint_states")
             and any(name == f"/{REC}/start"
                     for name, _ in probe.node.get_service_names_and_types()), 30,
             "the bridge and the recorder", procs=procs)
    time.sleep(1.0)  # the recorder's participant knows the bridge's by now
    before = probe.node.count_subscribers("/joint_states")
    answers = []
    os.kill(bridge.pid, signal.SIGSTOP)
    try:
        starting = threading.Thread(target=lambda: answers.append(call(probe, "start")))
        starting.start()
        wait_for(lambda: probe.node.count_subscribers("/joint_states") > before, 30,
                 "the recorder's subscription", procs=procs)
        time.sleep(1.5)
        assert not answers, answers[0].message  # the bridge cannot have matched it
    finally:
        os.kill(bridge.pid, signal.SIGCONT)
    starting.join(30)
    assert answers and answers[0].success, answers
    # the bridge's states from now on are the episode's, its state at reset first
    assert probe.call(Trigger, "/mujoco_bridge/reset").success
    time.sleep(1.0)
    assert call(probe, "stop").success
    entry = index(ds)[0]
    ticks = [int({kv.key: kv.value for kv in m.ros_msg.status[0].values}["tick"])
             for m in read_ros2_messages(str(ds / entry["name"] / f"{entry['name']}.mcap"),
                                         topics=["/episode/status"])]
    assert ticks[:1] == [0], ticks
    assert read_counts(ds / entry["name"])["/joint_states"] == len(ticks)


@pytest.mark.ros
def test_a_start_does_not_wait_for_a_reader_the_publisher_cannot_match(procs, probe, tmp_path):
    """A reliable reader of a best-effort topic is never matched by its publisher: the start
    compares a publisher's count with the readers it can match, and does not wait for that
    one until its timeout."""
    from rclpy.qos import QoSProfile

    procs.start_node("mujoco_bridge", params={
        "task": "reach", "mode": "lockstep", "start_paused": True, "cameras": ["front"],
        "camera_reliable": False, "camera_width": 32, "camera_height": 24})
    probe.node.create_subscription(Image, "/front/image_raw", lambda m: None,
                                   QoSProfile(depth=1))  # reliable: incompatible
    ds = tmp_path / "ds"
    procs.start_node("episode_recorder", params={
        "dataset": str(ds), "topics": ["/front/image_raw", "/joint_states"],
        "discovery_timeout": 20.0})
    wait_for(lambda: probe.node.count_subscribers("/front/image_raw") >= 2, 30,
             "the recorder's subscription", procs=procs)
    t0 = time.monotonic()
    resp = call(probe, "start")
    assert resp.success, resp.message
    assert time.monotonic() - t0 < 10.0
    assert "starting although" not in procs.log("episode_recorder")
    assert call(probe, "stop").success


def test_matched_reports_are_read_from_their_own_statuses_only():
    """What a recorder's ~/start reads of /diagnostics: the counts of the statuses named
    ``"<node>: subscriptions matched"``, by (node, topic), the newest winning; other statuses
    (a node's own diagnostics, whose values are not counts) and a value that is not a count are
    left out."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from robot_imitation.nodes.common import MATCHED_STATUS, matched_reports

    def status(name, values):
        return DiagnosticStatus(name=name, values=[KeyValue(key=k, value=v)
                                                   for k, v in values.items()])

    reports = {}
    matched_reports(DiagnosticArray(status=[
        status("mujoco_bridge: simulation", {"/joint_states": "7"}),
        status(f"/mujoco_bridge: {MATCHED_STATUS}", {"/joint_states": "2", "/clock": "3"}),
        status(f"/ns/expert: {MATCHED_STATUS}", {"/arm": "x"})]), reports)
    assert reports == {("/mujoco_bridge", "/joint_states"): 2, ("/mujoco_bridge", "/clock"): 3}
    matched_reports(DiagnosticArray(status=[
        status(f"/mujoco_bridge: {MATCHED_STATUS}", {"/joint_states": "3"})]), reports)
    assert reports[("/mujoco_bridge", "/joint_states")] == 3
