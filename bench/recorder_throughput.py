"""Throughput of the episode recorder: joint states at 1 kHz plus two 640x480 cameras at 30 Hz.

Two measurements in one run:

1. live recording: a publisher process (this script with ``--publisher``) publishes
   sensor_msgs/JointState (9 joints) on /bench/joint_states at --joint-rate (1000 Hz) and two
   640x480 rgb8 sensor_msgs/Image on /bench/cam0/image_raw and /bench/cam1/image_raw at
   --camera-rate (30 Hz), all RELIABLE, for --duration seconds on an absolute-time schedule.
   The episode_recorder node (another process) records the three topics as one episode.
   Per topic: published, received by the recorder, written to the bag (the dataset index),
   dropped (published - written; the goal is zero), and the count an independent reader (the
   ``mcap`` package, or sqlite3) finds in the bag. The recorder's CPU time comes from
   /proc/<pid>/stat over the recording window (start to the end of stop).
2. bare writer: the same serialized messages, read back from the recorded bag in order with
   their timestamps, written by ``rosbags``' Writer alone (same storage, version 9) as fast as
   it goes, in this process, under the allocator settings the recorder sets for itself
   (``robot_imitation.recording.heap``).

The recorder's CPU-seconds per GB over the bare writer's seconds per GB is what the recorder
costs over the library for the same data; the bare writer's MB/s over the live data rate is the
writer's headroom.

Prints a table and writes bench/results/recorder_throughput.json. It only measures: no figure is
checked against a threshold. Exits non-zero, printing the processes' logs, when the recorder or
the publisher dies or the recording does not start. Linux only (/proc).

    .venv/bin/python bench/recorder_throughput.py [--duration 60] [--storage mcap|sqlite3]
                                                  [--log-time receive|publication]
                                                  [--joint-rate 1000] [--camera-rate 30]
                                                  [--joint-depth 1000] [--image-depth 30]
                                                  [--keep]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from array import array
from pathlib import Path

from robot_imitation.ros.graph import SimGraph
from robot_imitation.paths import DDS_PROFILES, ensure_ros_environment

# Before rclpy is imported; the node processes inherit both (ProcessGroup copies os.environ).
# A domain of its own keeps the benchmark apart from other ROS 2 processes on the machine.
ensure_ros_environment()
# a private ROS domain (one nothing on this machine uses), this host only: the benchmark's
# simulated commands never reach another graph; its lock is held while the benchmark runs.
# The publisher process (this script again) joins the graph its parent picked.
GRAPH = SimGraph(join="--publisher" in sys.argv)
os.environ.update(GRAPH.env)

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from mcap.reader import make_reader  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from benchlib import (RESULTS_DIR, all_processes_cpu_seconds, positive, proc_stat,  # noqa: E402
                      run_with_ros, stat_cpu_seconds)
from robot_imitation.ros.launcher import ProcessDied, ProcessGroup  # noqa: E402
from robot_imitation.nodes.common import IMAGE_QOS  # noqa: E402
from robot_imitation.recording.heap import keep_freed_memory  # noqa: E402
from robot_imitation.nodes.episode_runner import Spinner  # noqa: E402

RECORDER = "episode_recorder"
PUBLISHER = "publisher"

JOINT_TOPIC = "/bench/joint_states"
CAMERA_TOPICS = ("/bench/cam0/image_raw", "/bench/cam1/image_raw")
TOPICS = (JOINT_TOPIC, *CAMERA_TOPICS)
JOINT_NAMES = [f"joint{i}" for i in range(1, 8)] + ["finger_joint1", "finger_joint2"]
WIDTH, HEIGHT = 640, 480
FRAMES_PER_CAMERA = 4  # distinct pre-built images per camera, published in turn
# Publishers' history depths (RELIABLE, KEEP_LAST). Joint states: deeper than STATE_QOS, as a
# 1 kHz publisher needs. Images: IMAGE_QOS. Best effort loses most large frames between processes.
JOINT_DEPTH = 1000  # about one second of history at 1 kHz, as IMAGE_QOS holds for 30 Hz cameras

STARTUP_TIMEOUT_S = 60.0  # recorder service up, topics matched
ACK_TIMEOUT_S = 10.0      # publisher: for the recorder to acknowledge the last messages
SETTLE_S = 1.0            # between the publisher's end and the stop call
STOP_TIMEOUT_S = 300.0    # stop drains the recorder's queue before it answers
BATCH_BYTES = 256 << 20   # bare writer: messages held in memory per timed batch
MB = 1e6
GB = 1e9

class BenchmarkError(RuntimeError):
    pass

# ============================================================================ publisher process

def _reliable(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=QoSReliabilityPolicy.RELIABLE,
                      history=QoSHistoryPolicy.KEEP_LAST)

def _stamp(header, t_ns: int) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(t_ns, 1_000_000_000)

class BenchPublisher:
    """Joint states and two cameras on pre-built messages, a few fields changed per message."""

    def __init__(self, node, joint_rate: float, camera_rate: float, joint_depth: int,
                 image_depth: int):
        self.joint_rate, self.camera_rate = joint_rate, camera_rate
        self.joint_pub = node.create_publisher(JointState, JOINT_TOPIC, _reliable(joint_depth))
        self.camera_pubs = [node.create_publisher(Image, t, _reliable(image_depth))
                            for t in CAMERA_TOPICS]
        n = len(JOINT_NAMES)
        self.joint_msg = JointState(name=JOINT_NAMES, position=[0.0] * n, velocity=[0.0] * n,
                                    effort=[0.0] * n)
        self.joint_msg.header.frame_id = "base_link"
        rng = np.random.default_rng(0)
        self.frames = [[self._image(rng, f"cam{c}_optical_frame")
                        for _ in range(FRAMES_PER_CAMERA)] for c in range(len(CAMERA_TOPICS))]
        self.published = collections.Counter({t: 0 for t in TOPICS})

    @staticmethod
    def _image(rng, frame_id: str) -> Image:
        msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3)
        msg.header.frame_id = frame_id
        msg.data = rng.integers(0, 256, HEIGHT * WIDTH * 3, dtype=np.uint8).tobytes()
        return msg

    def publishers(self) -> list:
        return [self.joint_pub, *self.camera_pubs]

    def publish_joints(self, i: int) -> None:
        msg = self.joint_msg
        _stamp(msg.header, time.time_ns())
        t = i / self.joint_rate
        for j in range(len(JOINT_NAMES)):  # a slow sine per joint
            phase = 2.0 * math.pi * 0.2 * t + j
            msg.position[j] = 0.5 * math.sin(phase)
            msg.velocity[j] = 0.2 * math.pi * math.cos(phase)
            msg.effort[j] = float(i % 1000) * 1e-3  # the message number: locates losses
        self.joint_pub.publish(msg)
        self.published[JOINT_TOPIC] += 1

    def publish_images(self, k: int) -> None:
        t_ns = time.time_ns()
        counter = array("B", k.to_bytes(8, "little"))
        for cam, (pub, frames) in enumerate(zip(self.camera_pubs, self.frames)):
            msg = frames[k % FRAMES_PER_CAMERA]
            _stamp(msg.header, t_ns)
            msg.data[:8] = counter  # the frame number in the first pixels
            pub.publish(msg)
            self.published[CAMERA_TOPICS[cam]] += 1

    def run(self, duration: float) -> dict:
        """Publish for ``duration`` s on an absolute schedule: late messages go out at once,
        none is skipped, so the counts are exact and the schedule does not drift."""
        n_joint = round(duration * self.joint_rate)
        n_camera = round(duration * self.camera_rate)
        joint_period, camera_period = 1.0 / self.joint_rate, 1.0 / self.camera_rate
        i = k = late = 0
        lag_sum = lag_max = 0.0
        last = {"joint": 0.0, "camera": 0.0}
        cpu0 = time.process_time()
        t0 = time.monotonic() + 0.01
        while i < n_joint or k < n_camera:
            due_joint = t0 + i * joint_period if i < n_joint else math.inf
            due_camera = t0 + k * camera_period if k < n_camera else math.inf
            due = min(due_joint, due_camera)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            lag = now - due
            lag_sum += lag
            lag_max = max(lag_max, lag)
            late += lag > 1e-3
            if due_camera <= due_joint:
                self.publish_images(k)
                stream, k = "camera", k + 1
            else:
                self.publish_joints(i)
                stream, i = "joint", i + 1
            last[stream] = now
        window = time.monotonic() - t0
        cpu = time.process_time() - cpu0

        def achieved(stream: str, n: int, period: float) -> float:
            # n messages over their scheduled start to the last one's actual send, plus one
            # period: exactly the target rate when no message is late at the end.
            span = last[stream] - t0 + period
            return n / span if n else 0.0

        acked = {pub.topic_name: pub.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
                 for pub in self.publishers()}
        sends = i + k
        return {"published": dict(self.published),
                "target_hz": {"joint_states": self.joint_rate, "cameras": self.camera_rate},
                "achieved_hz": {"joint_states": achieved("joint", i, joint_period),
                                "cameras": achieved("camera", k, camera_period)},
                "window_s": window, "cpu_s": cpu,
                "lag_ms": {"mean": lag_sum / max(sends, 1) * 1e3, "max": lag_max * 1e3},
                "late_over_1ms": late, "sends": sends, "all_acked": acked}

def wait_for(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"no {what} within {timeout:g} s")
        time.sleep(0.005)

def publisher_main(args: argparse.Namespace) -> int:
    """The publisher process: set up, wait for the go file and the recorder, publish, report."""
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("recorder_throughput_publisher")
    try:
        bench = BenchPublisher(node, args.joint_rate, args.camera_rate, args.joint_depth,
                               args.image_depth)
        go = Path(args.go_file)
        wait_for(go.exists, STARTUP_TIMEOUT_S * 2, "go from the benchmark")
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in bench.publishers()),
                 STARTUP_TIMEOUT_S, "subscription of the recorder on every topic")
        print(f"[publisher] publishing for {args.duration:g} s", flush=True)
        result = bench.run(args.duration)
        print(f"[publisher] done: {result}", flush=True)
        out = Path(args.counts_file)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        os.replace(tmp, out)
        return 0
    except BenchmarkError as exc:
        print(f"[publisher] {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()

# ============================================================================ measuring

def process_cpu_seconds(pid: int | str, children: bool = False) -> float:
    """utime + stime of a process (with ``children``: + cutime + cstime, the CPU time of the
    children it has waited for)."""
    return stat_cpu_seconds(proc_stat(pid), children)

def process_peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    return float("nan")

class CpuWatch:
    """CPU-seconds of one process sampled over time: total, average and peak one-second share."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.sample()

    def sample(self) -> None:
        self.samples.append((time.monotonic(), process_cpu_seconds(self.pid)))

    def summary(self) -> dict:
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        peak, j = 0.0, 0
        for ta, ca in self.samples:
            while j < len(self.samples) and self.samples[j][0] - ta < 1.0:
                j += 1
            if j == len(self.samples):
                break
            tb, cb = self.samples[j]
            peak = max(peak, (cb - ca) / (tb - ta))
        return {"cpu_s": c1 - c0, "window_s": t1 - t0,
                "percent_of_one_core": 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0,
                "peak_1s_percent_of_one_core": 100.0 * peak}

def call(client, alive, timeout: float) -> Trigger.Response:
    """Call a Trigger service, checking meanwhile that the processes are alive."""
    deadline = time.monotonic() + timeout
    while not client.wait_for_service(timeout_sec=0.2):
        alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"service {client.srv_name} not available within {timeout:g} s")
    future = client.call_async(Trigger.Request())
    while not future.done():
        alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"service {client.srv_name} did not answer within {timeout:g} s")
        time.sleep(0.01)
    return future.result()

@contextlib.contextmanager
def recorder_and_publisher(args: argparse.Namespace, dataset: Path, work: Path):
    """The recorder node and the publisher as processes, logging to results/logs/; always stopped.

    On a failure their logs are printed (after they are stopped, so the logs are complete).
    """
    group = ProcessGroup(RESULTS_DIR / "logs" / "recorder_throughput")
    try:
        with group:
            group.start_node(RECORDER, params={
                "dataset": str(dataset), "topics": list(TOPICS), "storage": args.storage,
                "log_time": args.log_time, "discovery_timeout": STARTUP_TIMEOUT_S})
            group.start(PUBLISHER, [
                sys.executable, str(Path(__file__).resolve()), "--publisher",
                "--duration", str(args.duration), "--joint-rate", str(args.joint_rate),
                "--camera-rate", str(args.camera_rate), "--joint-depth", str(args.joint_depth),
                "--image-depth", str(args.image_depth), "--go-file", str(work / "go"),
                "--counts-file", str(work / "published.json")])
            yield group
    except (ProcessDied, BenchmarkError):
        for name in (RECORDER, PUBLISHER):
            print(f"----- log of {name} -----\n{group.log(name).rstrip()}", file=sys.stderr)
        raise

def measure_recording(args: argparse.Namespace, dataset: Path, work: Path) -> dict:
    """Record one episode of the publisher's messages; counts, CPU, timings."""
    node = rclpy.create_node("recorder_throughput")
    start = node.create_client(Trigger, f"/{RECORDER}/start")
    stop = node.create_client(Trigger, f"/{RECORDER}/stop")
    spinner = Spinner(node)
    try:
        with recorder_and_publisher(args, dataset, work) as group:
            recorder, publisher = group.procs[RECORDER], group.procs[PUBLISHER]

            def recorder_alive() -> None:
                if recorder.poll() is not None:
                    raise ProcessDied(f"{RECORDER} exited with code {recorder.returncode}")

            def both_alive() -> None:
                recorder_alive()
                if publisher.poll() is not None:
                    raise ProcessDied(f"{PUBLISHER} exited with code {publisher.returncode}")

            resp = call(start, both_alive, STARTUP_TIMEOUT_S * 2)
            if not resp.success:
                raise BenchmarkError(f"the recorder did not start: {resp.message}")
            episode = resp.message.split()[-1]
            cpu = CpuWatch(recorder.pid)
            # This process and the publisher (counted in this one's children once reaped);
            # everything on the machine.
            own0 = (process_cpu_seconds(os.getpid(), True)
                    + process_cpu_seconds(publisher.pid, True))
            all0 = all_processes_cpu_seconds()
            t0 = time.monotonic()
            (work / "go").touch()
            deadline = t0 + args.duration + STARTUP_TIMEOUT_S + ACK_TIMEOUT_S
            while publisher.poll() is None:
                recorder_alive()
                if time.monotonic() > deadline:
                    raise BenchmarkError("the publisher did not finish in time")
                cpu.sample()
                time.sleep(0.25)
            if publisher.returncode != 0:
                raise ProcessDied(f"{PUBLISHER} exited with code {publisher.returncode}")
            group.stop(PUBLISHER)
            settle_end = time.monotonic() + SETTLE_S
            while time.monotonic() < settle_end:
                recorder_alive()
                cpu.sample()
                time.sleep(0.25)
            t_stop = time.monotonic()
            resp = call(stop, recorder_alive, STOP_TIMEOUT_S)
            t1 = time.monotonic()
            cpu.sample()
            own1, all1 = process_cpu_seconds(os.getpid(), True), all_processes_cpu_seconds()
            peak_rss = process_peak_rss_mb(recorder.pid)
            if not resp.success:
                raise BenchmarkError(f"stop failed: {resp.message}")
    finally:
        spinner.stop()
        node.destroy_node()
    entries = json.loads((dataset / "index.json").read_text())["episodes"]
    entry = next(e for e in entries if e["name"] == episode)
    recorder_cpu = cpu.summary()
    other = (all1[0] - all0[0]) - (own1 - own0) - recorder_cpu["cpu_s"]
    window = t1 - t0
    return {"episode": entry, "publisher": json.loads((work / "published.json").read_text()),
            "recorder_cpu": {**recorder_cpu, "peak_rss_mb": peak_rss},
            "stop_s": t1 - t_stop, "stop_message": resp.message,
            "benchmark_and_publisher_cpu_s": own1 - own0,
            "other_processes_cpu": {"cpu_s": other, "window_s": window,
                                    "percent_of_all_cores":
                                        100.0 * other / (window * os.cpu_count())},
            "kernel_threads_cpu_s": all1[1] - all0[1]}

def read_bag_counts(bag: Path, delays: dict | None = None) -> dict:
    """Messages per topic, read without rosbags: the ``mcap`` package, or sqlite3 itself.
    MCAP: ``delays`` gets per topic the log time minus the header stamp of each message (ms):
    with log time ``receive``, how long after publication the recorder had it."""
    counts = collections.Counter()
    for path in sorted(bag.glob("*.mcap")):
        with open(path, "rb") as f:
            for _, channel, message in make_reader(f).iter_messages(log_time_order=False):
                counts[channel.topic] += 1
                if delays is not None:  # CDR: 4 bytes of encapsulation, then the stamp
                    data = message.data
                    stamp = (int.from_bytes(data[4:8], "little") * 1_000_000_000
                             + int.from_bytes(data[8:12], "little"))
                    delays.setdefault(channel.topic, array("d")).append(
                        (message.log_time - stamp) / 1e6)
    for path in sorted(bag.glob("*.db3")):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            counts.update(dict(db.execute(
                "SELECT t.name, COUNT(*) FROM messages m JOIN topics t ON m.topic_id = t.id "
                "GROUP BY t.name")))
    return dict(counts)

def bag_size(bag: Path) -> int:
    return sum(p.stat().st_size for p in bag.rglob("*") if p.is_file())

def measure_bare_writer(bag: Path, storage: str, out: Path) -> dict:
    """Write the recorded messages again with rosbags' Writer alone, as fast as it goes.

    Messages are read back in batches held in memory; only the writer's calls (open, add
    connections, write, close) are timed, on this thread's clock and on the wall clock.
    """
    typestore = get_typestore(Stores.ROS2_KILTED)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    wall = cpu = 0.0
    messages = nbytes = 0

    @contextlib.contextmanager
    def timed():
        nonlocal wall, cpu
        w0, c0 = time.perf_counter(), time.thread_time()
        yield
        wall += time.perf_counter() - w0
        cpu += time.thread_time() - c0

    with Reader(bag) as reader:
        writer = Writer(out, version=9, storage_plugin=plugin)
        with timed():
            writer.open()
            conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore)
                     for c in reader.connections}
        batch: list = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch_bytes
            with timed():
                for conn, t_ns, data in batch:
                    writer.write(conn, t_ns, data)
            batch.clear()
            batch_bytes = 0

        for conn, t_ns, data in reader.messages():
            batch.append((conns[conn.id], t_ns, data))
            batch_bytes += len(data)
            nbytes += len(data)
            messages += 1
            if batch_bytes >= BATCH_BYTES:
                flush()
        flush()
        with timed():
            writer.close()
    size = bag_size(out)
    return {"messages": messages, "bytes": nbytes, "bag_bytes": size, "wall_s": wall,
            "cpu_s": cpu, "mb_per_s": nbytes / MB / wall if wall > 0 else 0.0}

def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="recorder_throughput-"))
    dataset = work / "dataset"
    results = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "duration_s": args.duration, "storage": args.storage, "log_time": args.log_time,
               "joint_rate_hz": args.joint_rate, "camera_rate_hz": args.camera_rate,
               "joint_depth": args.joint_depth, "image_depth": args.image_depth,
               "camera": f"{WIDTH}x{HEIGHT} rgb8", "topics": list(TOPICS),
               "dds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")}
    try:
        print(f"[bench] live recording (ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}): "
              f"start-up + {args.duration:g} s", flush=True)
        live = measure_recording(args, dataset, work)
        bag = dataset / live["episode"]["path"]
        delays: dict = {}
        live["bag_counts"] = read_bag_counts(bag, delays)
        live["delivery_ms"] = {
            t: {"p50": float(np.median(d)), "p99": float(np.percentile(d, 99)),
                "max": float(np.max(d)), "over_100ms": int((np.asarray(d) > 100).sum())}
            for t, d in delays.items() if len(d)}
        live["bag_bytes"] = bag_size(bag)
        results["live"] = live
        print("[bench] bare rosbags writer: the same messages", flush=True)
        # with the allocator settings the recorder runs with (its frames and chunk buffers
        # reuse freed memory): the comparison is of the code, not of the allocators
        results["bare_writer_heap"] = keep_freed_memory()
        results["bare_writer"] = measure_bare_writer(bag, args.storage, work / "bare_writer")
        shutil.rmtree(work / "bare_writer", ignore_errors=True)
    finally:
        if args.keep:
            results["dataset"] = str(dataset)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results.update(summarize(results))
    return results

def summarize(r: dict) -> dict:
    live, bare = r["live"], r["bare_writer"]
    entry, pub = live["episode"], live["publisher"]
    published, received, written = pub["published"], entry["received"], entry["counts"]
    per_topic = {t: {"published": published.get(t, 0), "received": received.get(t, 0),
                     "written": written.get(t, 0),
                     "dropped": published.get(t, 0) - written.get(t, 0),
                     "lost_before_recorder": published.get(t, 0) - received.get(t, 0),
                     "dropped_by_recorder_queue": entry.get("dropped", {}).get(t, 0),
                     "in_bag": live["bag_counts"].get(t, 0)} for t in TOPICS}
    data_gb = entry["bytes"] / GB
    recorder_s_per_gb = live["recorder_cpu"]["cpu_s"] / data_gb
    # CPU over CPU: the bare writer's wall time grows with other load on the machine, which
    # would flatter the recorder (equal to its CPU time on a quiet machine)
    bare_s_per_gb = bare["cpu_s"] / (bare["bytes"] / GB)
    bare_wall_s_per_gb = bare["wall_s"] / (bare["bytes"] / GB)
    live_mb_s = entry["bytes"] / MB / pub["window_s"]
    return {"per_topic": per_topic,
            "dropped_total": sum(v["dropped"] for v in per_topic.values()),
            "bag_matches_written": all(v["in_bag"] == v["written"] for v in per_topic.values()),
            "live_data_mb_per_s": live_mb_s,
            "recorder_cpu_s_per_gb": recorder_s_per_gb,
            "bare_writer_wall_s_per_gb": bare_wall_s_per_gb,
            "bare_writer_cpu_s_per_gb": bare_s_per_gb,
            "recorder_over_bare_writer": recorder_s_per_gb / bare_s_per_gb,
            "bare_writer_headroom": bare["mb_per_s"] / live_mb_s}

# ============================================================================ report

def report(r: dict) -> str:
    live, bare, pub = r["live"], r["bare_writer"], r["live"]["publisher"]
    rec, other = live["recorder_cpu"], live["other_processes_cpu"]
    entry = live["episode"]
    lines = [f"Episode recorder, {pub['window_s']:.1f} s: joint states (9 joints) "
             f"{r['joint_rate_hz']:g} Hz + 2 cameras {r['camera']} {r['camera_rate_hz']:g} Hz",
             f"  RELIABLE, publisher history depths {r['joint_depth']} (joint states), "
             f"{r['image_depth']} (images); storage {r['storage']}, log time {r['log_time']}; "
             f"{r['cpus']} CPUs",
             f"  {'topic':26}{'published':>11}{'received':>10}{'written':>10}{'dropped':>9}"
             f"{'in bag':>9}"]
    for topic, v in r["per_topic"].items():
        lines.append(f"  {topic:26}{v['published']:11d}{v['received']:10d}{v['written']:10d}"
                     f"{v['dropped']:9d}{v['in_bag']:9d}")
    lost = sum(v["lost_before_recorder"] for v in r["per_topic"].values())
    queue = sum(v["dropped_by_recorder_queue"] for v in r["per_topic"].values())
    lines += [f"  dropped = published - written: {r['dropped_total']} ({lost} never reached the "
              f"recorder, {queue} refused by its full queue)",
              f"  bag read back independently: "
              f"{'matches the written counts' if r['bag_matches_written'] else 'MISMATCH'}",
              f"  DDS profile: {r.get('dds_profile') or 'none (Fast DDS defaults)'}",
              "  delivery (log time - header stamp), ms:"]
    for topic, d in live.get("delivery_ms", {}).items():
        lines.append(f"    {topic:24} p50 {d['p50']:.2f}  p99 {d['p99']:.1f}  max "
                     f"{d['max']:.1f}  over 100 ms: {d['over_100ms']}")
    lines += ["",
              f"  {'publisher achieved':34}joint states {pub['achieved_hz']['joint_states']:.1f} "
              f"Hz, cameras {pub['achieved_hz']['cameras']:.2f} Hz; lag mean "
              f"{pub['lag_ms']['mean']:.2f} ms, max {pub['lag_ms']['max']:.1f} ms, "
              f"{pub['late_over_1ms']} of {pub['sends']} sends > 1 ms late; "
              f"CPU {100 * pub['cpu_s'] / pub['window_s']:.0f} % of one core; all acked: "
              f"{'yes' if all(pub['all_acked'].values()) else 'NO'}",
              f"  {'data recorded':34}{entry['bytes'] / MB:.1f} MB = "
              f"{r['live_data_mb_per_s']:.1f} MB/s; bag on disk {live['bag_bytes'] / MB:.1f} MB",
              f"  {'recorder CPU':34}{rec['cpu_s']:.2f} s in {rec['window_s']:.1f} s = "
              f"{rec['percent_of_one_core']:.1f} % of one core (peak 1 s: "
              f"{rec['peak_1s_percent_of_one_core']:.0f} %); peak RSS {rec['peak_rss_mb']:.0f} MB",
              f"  {'stop (drain + close) took':34}{live['stop_s']:.2f} s",
              f"  {'other processes on the machine':34}{other['cpu_s']:.1f} CPU-s = "
              f"{other['percent_of_all_cores']:.0f} % of the {r['cpus']} cores (meanwhile: "
              f"recorder {rec['cpu_s']:.1f}, publisher and benchmark "
              f"{live['benchmark_and_publisher_cpu_s']:.1f}, kernel threads "
              f"{live['kernel_threads_cpu_s']:.1f})",
              "",
              f"Bare rosbags writer, same {bare['messages']} messages, same storage, this process"
              + (", the recorder's allocator settings" if r.get("bare_writer_heap") else ""),
              f"  {'write time':34}{bare['wall_s']:.2f} s wall, {bare['cpu_s']:.2f} s CPU = "
              f"{bare['mb_per_s']:.0f} MB/s",
              f"  {'recorder CPU-s per GB':34}{r['recorder_cpu_s_per_gb']:.2f}",
              f"  {'bare writer CPU-s per GB':34}{r['bare_writer_cpu_s_per_gb']:.2f} "
              f"({r['bare_writer_wall_s_per_gb']:.2f} s wall)",
              f"  {'recorder cost / bare writer':34}{r['recorder_over_bare_writer']:.2f}x "
              "(CPU-s per GB over CPU-s per GB)",
              f"  {'bare writer MB/s / live data rate':34}{r['bare_writer_headroom']:.1f}x "
              f"headroom"]
    if r.get("dataset"):
        lines.append(f"  (dataset kept in {r['dataset']})")
    return "\n".join(lines)

# ============================================================================ main

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive, default=60.0,
                        help="seconds of publishing (default: 60)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="bag storage of the recorder and the bare writer (default: mcap)")
    parser.add_argument("--log-time", choices=("receive", "publication"), default="receive",
                        help="the recorder's log_time (default: receive, as rosbag2)")
    parser.add_argument("--joint-rate", type=positive, default=1000.0,
                        help="joint states per second (default: 1000)")
    parser.add_argument("--camera-rate", type=positive, default=30.0,
                        help="images per second per camera (default: 30)")
    parser.add_argument("--joint-depth", type=positive_int, default=JOINT_DEPTH,
                        help=f"history depth of the joint state publisher (default: "
                             f"{JOINT_DEPTH})")
    parser.add_argument("--image-depth", type=positive_int, default=IMAGE_QOS.depth,
                        help="history depth of the camera publishers (default: "
                             f"{IMAGE_QOS.depth}, as IMAGE_QOS)")
    parser.add_argument("--dds-profile", default="large_data",
                        metavar="|".join(DDS_PROFILES) + "|off|XML",
                        help="Fast DDS profile of every process of the run: a profile of the "
                        "suite (config/fastdds/<name>.xml; default: large_data, what camera "
                        "recording needs), off (Fast DDS's defaults) or a profile file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the recorded dataset (default: a temporary folder, removed)")
    # The publisher process: this script started by itself.
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--go-file", help=argparse.SUPPRESS)
    parser.add_argument("--counts-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.publisher:
        return publisher_main(args)
    # before rclpy.init (this process) and the processes it starts, which inherit it
    os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    choice = args.dds_profile
    if choice not in (*DDS_PROFILES, "off"):
        if not Path(choice).is_file():
            print(f"error: --dds-profile {choice}: no such file", file=sys.stderr)
            return 2
        choice = str(Path(choice).resolve())
    os.environ["ROBOT_IMITATION_DDS_PROFILE"] = choice
    ensure_ros_environment()  # sets FASTDDS_DEFAULT_PROFILES_FILE from the choice
    return run_with_ros("recorder_throughput", run, report, args, (ProcessDied, BenchmarkError))

if __name__ == "__main__":
    sys.exit(main())
