"""State-to-command latency of the policy node over DDS, against a bare echo node in the same run.

The benchmark process plays the robot driver: it publishes the observations of a spec on an
absolute-time schedule and receives the commands. The node under test is a separate process.
Three measurements in one run:

1. MLP policy (spec ``reach``) at --rate (1000 Hz) for --duration (60) seconds: /ee_pose and
   /target_pose (geometry_msgs/PoseStamped), then /joint_states (sensor_msgs/JointState, the
   spec's 9 joints), all stamped alike; commands on /arm_controller/commands and
   /gripper_controller/commands (std_msgs/Float64MultiArray). First against the echo node
   (bench/echo_node.py: the same subscriptions and QoS, answers each joint state with its
   positions), then against the ``policy_node`` (trigger ``state``, no action limits). Reported:
   latency p50/p99/max from sending a state to receiving its arm command, commands received
   against states sent, missed ticks (states never answered), the achieved publish rate, and the
   ratio policy node / echo node of p50 and p99: what the policy node adds over the DDS floor.
2. Image policy (spec ``push_image``) at --image-rate (30 Hz) for --image-duration (30) seconds:
   /front/image_raw (320x240 rgb8, as the bridge publishes it; the node resizes it to the spec's
   96x96), /ee_pose, then /joint_states; the same figures against the same two nodes. With
   --camera-rate below --image-rate, a frame goes out with every k-th state only (k =
   image-rate / camera-rate, rounded): the node answers each joint state with the newest frame
   (``camera_frames: latest``), encoding each frame once (``camera_encoding``, --camera-encoding:
   inline, ahead on a thread of its own, or between the ticks in stages on the control thread);
   e.g. --image-rate 500 --camera-rate 30
   --camera-encoding ahead: a 500 Hz loop with a 30 Hz camera. With ``ahead``, the echo node
   runs a second time, after the policy node, encoding each new frame as the policy node does
   (``encoder_checkpoint``: the same encoder, on the backend the policy node chose, at its
   thread priority; its answers unchanged): ``policy/(e+enc)`` is the policy node over the
   floor with the encoding's CPU work alongside, what the node adds beyond what that work
   costs the machine. With a slower camera, the latency of the states sent with a frame and
   of the others is also given apart (``latency_frame_states``, ``latency_other_states``).
3. The inference backends ``select_backend(policy, "auto")`` measures on each policy (one
   thread, as the node runs them), with the ratio of each to eager PyTorch.

Float64MultiArray has no stamp, so each command is traced back to its state by its values: the
driver cycles through N distinct states (tick % N; N = 1000 at 1 kHz, 300 for images: a cycle
of one and ten seconds), whose commands are computed beforehand (the echo: the positions; the
policy: the same checkpoint run in this process). A received arm command is decoded to the
nearest expected command; one further than 1e-3 from it is unmatched. Its latency is the receive
time minus the send time of the newest earlier send of that state. With a slower camera and
``camera_encoding: ahead`` a state may be answered from the previous frame's features (the new
one still being encoded): those commands are expected too, and counted.

By default the checkpoints are built with untrained random weights (and plausible
normalization) of the architecture training produces: the latency does not depend on the weight
values. --checkpoint and --image-checkpoint take trained ones instead.

Prints a table and writes bench/results/policy_latency.json. It only measures: no figure is
checked against a threshold. Exits non-zero, printing the node's log, when a node dies or does
not start.

    .venv/bin/python bench/policy_latency.py [--duration 60] [--image-duration 30]
                                             [--rate 1000] [--image-rate 30] [--backend auto]
                                             [--checkpoint DIR] [--image-checkpoint DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from robot_imitation.ros.graph import SimGraph
from robot_imitation.paths import ensure_ros_environment

# Before rclpy is imported; the node processes inherit both (ProcessGroup copies os.environ).
# A domain of its own keeps the benchmark apart from other ROS 2 processes on the machine.
ensure_ros_environment()
# a private ROS domain (one nothing on this machine uses), this host only: the benchmark's
# simulated commands never reach another graph; its lock is held while the benchmark runs
GRAPH = SimGraph()
os.environ.update(GRAPH.env)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from benchlib import (RESULTS_DIR, BenchmarkError, all_processes_cpu_seconds,  # noqa: E402
                      positive, proc_stat, run_with_ros, stat_cpu_seconds, wait_until)
from robot_imitation.deploy.backends import KINDS as BACKEND_KINDS  # noqa: E402
from robot_imitation.deploy.backends import BackendError, select_backend  # noqa: E402
from robot_imitation.deploy.runtime import CAMERA_ENCODINGS, ENCODER_PRIORITIES  # noqa: E402
from robot_imitation.ros.launcher import ProcessDied, ProcessGroup  # noqa: E402
from robot_imitation.learning.checkpoint import (CheckpointError, load_checkpoint,  # noqa: E402
                                                 save_checkpoint)
from robot_imitation.learning.trainer import TrainConfig  # noqa: E402
from robot_imitation.nodes.common import IMAGE_QOS, STATE_QOS  # noqa: E402
from robot_imitation.nodes.episode_runner import Spinner  # noqa: E402
from robot_imitation.policies import make_policy  # noqa: E402
from robot_imitation.spec import Spec, SpecError  # noqa: E402

POLICY = "policy_node"
ECHO = "echo_node"
BACKEND_CHOICES = ("auto", *BACKEND_KINDS)
ECHO_ENCODER = "echo+encoder"  # the echo node with the camera encoding alongside
WARMUP_S = 3.0             # before each measured window; its commands are discarded
STARTUP_TIMEOUT_S = 120.0  # for a node to come up (the policy node measures its backends)
DRAIN_S = 1.0              # after the last state, for the last commands to arrive
MATCH_TOLERANCE = 1e-3     # largest difference from the expected command that still matches
STATES_LOW_DIM = 1000      # distinct states cycled through: one second at 1 kHz
STATES_IMAGE = 300         # ten seconds at 30 Hz
IMAGES = 30                # distinct camera frames (state i shows frame i % IMAGES)
CAMERA_WIDTH, CAMERA_HEIGHT = 320, 240  # what the bridge publishes
BASE_POSTURE = [0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8, 0.04, 0.04]  # panda: 7 arm joints, 2 fingers
POSES = {"/ee_pose": [0.45, 0.0, 0.35, 0.0, 1.0, 0.0, 0.0],        # x y z qw qx qy qz
         "/target_pose": [0.55, 0.1, 0.2, 1.0, 0.0, 0.0, 0.0]}
DEFAULT_POSE = [0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]                 # other pose topics
# The driver's command subscriptions: deep reliable history, so that no command is lost here.
COMMAND_SUB_QOS = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                             history=QoSHistoryPolicy.KEEP_LAST)

# ============================================================================ checkpoints

def make_checkpoint(spec_name: str, path: Path) -> Path:
    """A checkpoint of the architecture training builds for ``spec_name`` (``TrainConfig``
    defaults), with untrained random weights and normalization of plausible magnitudes, so
    that the outputs vary with the inputs as a trained policy's do."""
    spec = Spec.load(spec_name)
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig())
    shift, scale = [], []
    for f in spec.low_dim_observations:
        n = f.shape[0]
        if f.field == "position" and n == len(BASE_POSTURE):
            shift += BASE_POSTURE
            scale += [0.1] * n
        elif f.field == "pose":
            shift += POSES.get(f.topic, DEFAULT_POSE)
            scale += [0.1] * 3 + [0.5] * 4
        else:  # velocities
            shift += [0.0] * n
            scale += [0.5] * n
    for f in spec.features:  # relative positions
        shift += [0.0] * f.size
        scale += [0.1] * f.size
    policy.obs_norm.set(shift, scale)
    act_shift, act_scale = np.zeros(spec.action_dim), np.full(spec.action_dim, 0.05)
    for f, (_, a, b) in zip(spec.actions, action_slices(spec)):
        if not f.relative_to:  # absolute (the gripper, 0..1)
            act_shift[a:b], act_scale[a:b] = 0.5, 0.5
    policy.act_norm.set(act_shift, act_scale)
    return save_checkpoint(path, policy, spec, extra={"note": "random weights (benchmark)"})

def action_slices(spec: Spec) -> list[tuple[str, int, int]]:
    """(topic, start, end) of each action in the action vector."""
    out, start = [], 0
    for f in spec.actions:
        out.append((f.topic, start, start + f.shape[0]))
        start += f.shape[0]
    return out

# ============================================================================ the states

@dataclass
class States:
    """N distinct states of a spec as pre-built messages, and what each should be answered."""

    spec: Spec
    joint_topic: str
    joints: list          # JointState messages, one per state
    poses: dict           # topic -> PoseStamped (the same for every state)
    images: dict          # topic -> [Image] (state i shows image frame(i))
    frame_every: int = 1  # a frame goes out with every k-th state (a slower camera)

    @property
    def n(self) -> int:
        return len(self.joints)

    def frame(self, i: int, back: int = 0) -> int:
        """The frame shown at state i (``back`` frames before it)."""
        return (i // self.frame_every - back) % IMAGES

    def messages(self, i: int) -> list[tuple[str, object]]:
        """(topic, message) of state i, in publishing order: images (with every k-th state),
        poses, joint states last (the echo node answers the joint states)."""
        images = [] if i % self.frame_every else [
            (t, frames[self.frame(i)]) for t, frames in self.images.items()]
        return images + list(self.poses.items()) + [(self.joint_topic, self.joints[i])]

    def observations(self, back: int = 0) -> dict:
        """The observation of every state, as the policy node assembles it (``Spec.extract``:
        joints by name, images decoded and resized), with the frame ``back`` frames before its
        own, stacked: key -> (N, ...)."""
        per_state = []
        for i in range(self.n):
            msgs = dict(self.messages(i))
            msgs.update({t: frames[self.frame(i, back)] for t, frames in self.images.items()})
            per_state.append({f.key: self.spec.extract(f, msgs[f.topic])
                              for f in self.spec.observations})
        return {k: np.stack([o[k] for o in per_state]) for k in per_state[0]}

def make_states(spec: Spec, n: int, seed: int = 0, frame_every: int = 1) -> States:
    """Joint positions: a base posture plus a distinct offset per state (what tells the
    commands apart); velocities vary too; poses are fixed; camera frames are random pixels."""
    rng = np.random.default_rng(seed)
    by_type: dict = {}
    for f in spec.observations:
        by_type.setdefault(f.type, set()).add(f.topic)
    unsupported = set(by_type) - {"sensor_msgs/msg/JointState", "geometry_msgs/msg/PoseStamped",
                                  "sensor_msgs/msg/Image"}
    joint_topics = sorted(by_type.get("sensor_msgs/msg/JointState", ()))
    if unsupported or len(joint_topics) != 1:
        raise BenchmarkError(f"spec '{spec.name}': the driver publishes one JointState topic, "
                             f"poses and images (it observes {sorted(by_type)})")
    names = []
    for f in spec.observations:
        names += [j for j in f.joints if j not in names]
    base = np.array(BASE_POSTURE if len(names) == len(BASE_POSTURE) else [0.0] * len(names))
    size = np.where(np.arange(len(names)) < spec.actions[0].shape[0], 0.1, 0.01)
    positions = base + rng.uniform(-1.0, 1.0, (n, len(names))) * size
    velocities = rng.normal(0.0, 0.2, (n, len(names)))
    joints = []
    for p, v in zip(positions, velocities):
        msg = JointState(name=names, position=p.tolist(), velocity=v.tolist(),
                         effort=[0.0] * len(names))
        msg.header.frame_id = "world"
        joints.append(msg)
    poses = {}
    for topic in sorted(by_type.get("geometry_msgs/msg/PoseStamped", ())):
        x, y, z, qw, qx, qy, qz = POSES.get(topic, DEFAULT_POSE)
        msg = PoseStamped()
        msg.header.frame_id = "world"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = x, y, z
        o = msg.pose.orientation
        o.w, o.x, o.y, o.z = qw, qx, qy, qz
        poses[topic] = msg
    images = {}
    for topic in sorted(by_type.get("sensor_msgs/msg/Image", ())):
        frames = []
        for _ in range(IMAGES):
            msg = Image(height=CAMERA_HEIGHT, width=CAMERA_WIDTH, encoding="rgb8",
                        step=CAMERA_WIDTH * 3)
            msg.header.frame_id = topic.strip("/").split("/")[0] + "_optical_frame"
            msg.data = rng.integers(0, 256, CAMERA_HEIGHT * CAMERA_WIDTH * 3,
                                    dtype=np.uint8).tobytes()
            frames.append(msg)
        images[topic] = frames
    return States(spec, joint_topics[0], joints, poses, images, frame_every)

def expected_policy(policy, states: States, back: int = 0) -> np.ndarray:
    """(N, arm size): the first action's values of each state, by the checkpoint run here
    (with the frame ``back`` frames before the state's own)."""
    obs = states.observations(back)
    _, a, b = action_slices(states.spec)[0]
    out = []
    with torch.inference_mode():
        for start in range(0, states.n, 100):
            batch = {k: torch.from_numpy(v[start:start + 100]) for k, v in obs.items()}
            out.append(policy.act(batch)[:, 0, a:b].double().numpy())
    return np.concatenate(out)

def expected_echo(states: States) -> np.ndarray:
    """(N, arm size): the positions the echo node sends back."""
    _, a, b = action_slices(states.spec)[0]
    return np.array([msg.position[a:b] for msg in states.joints])

def separation(table: np.ndarray) -> float:
    """Smallest max-abs difference between two rows: how far apart the expected commands are
    (decoding is unambiguous while it is well above twice the match tolerance)."""
    best = np.inf
    for start in range(0, len(table), 100):
        d = np.abs(table[start:start + 100, None, :] - table[None, :, :]).max(-1)
        d[np.arange(d.shape[0]), start + np.arange(d.shape[0])] = np.inf
        best = min(best, float(d.min()))
    return best

# ============================================================================ the driver

class Driver(Node):
    """Publishes the states on a schedule (``publish``, from a thread of its own) and records
    the commands (raw, with their receive times) and the policy node's /diagnostics."""

    def __init__(self, states: States):
        super().__init__("policy_latency_driver")
        self.states = states
        self.state_pubs = {}
        for topic, _ in states.messages(0):
            mtype = Image if topic in states.images else (
                PoseStamped if topic in states.poses else JointState)
            # as the bridge publishes them: state QoS, images with about a second of history
            self.state_pubs[topic] = self.create_publisher(
                mtype, topic, IMAGE_QOS if mtype is Image else STATE_QOS)
        # per state: (publisher, message) in order, built once
        self._order = [[(self.state_pubs[t], m) for t, m in states.messages(i)]
                       for i in range(states.n)]
        self.arm_topic = states.spec.actions[0].topic
        self.command_topics = [f.topic for f in states.spec.actions]
        self.arm: list = []        # (serialized command, receive time)
        self.others = 0            # commands received on the other action topics
        self.diagnostics: list = []  # (receive time, {key: value}) of the policy node
        # raw: deserialized after the run, so the callbacks hardly take CPU from the nodes
        self.create_subscription(Float64MultiArray, self.arm_topic, self._on_arm,
                                 COMMAND_SUB_QOS, raw=True)
        for topic in self.command_topics[1:]:
            self.create_subscription(Float64MultiArray, topic, self._on_other, COMMAND_SUB_QOS,
                                     raw=True)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.tick = 0              # the next tick to send (read by the main thread)
        self.send_times = np.zeros(0)
        self.lags = np.zeros(0)

    def _on_arm(self, raw: bytes) -> None:
        self.arm.append((raw, time.monotonic()))

    def _on_other(self, _raw: bytes) -> None:
        self.others += 1

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith((POLICY, ECHO)):
                self.diagnostics.append((time.monotonic(),
                                         {kv.key: kv.value for kv in status.values}))

    def reset(self) -> None:
        """Forget what was received (the discovery wait's commands, say)."""
        self.arm, self.others, self.diagnostics = [], 0, []

    def publish(self, ticks: int, rate: float, stop: threading.Event) -> None:
        """Send ``ticks`` states at ``rate`` on an absolute schedule: sleep until each tick's
        deadline; a late tick goes out at once and none is skipped, so the schedule does not
        drift. The send time of a tick is taken just before its first message is published."""
        period = 1.0 / rate
        self.send_times = np.full(ticks, np.nan)
        self.lags = np.full(ticks, np.nan)
        n = self.states.n
        t0 = time.monotonic() + 0.01
        for k in range(ticks):
            if stop.is_set():
                break
            due = t0 + k * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sec, nanosec = divmod(time.time_ns(), 1_000_000_000)  # all parts stamped alike
            order = self._order[k % n]
            for _, msg in order:
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
            now = time.monotonic()
            self.send_times[k], self.lags[k] = now, now - due
            for pub, msg in order:
                pub.publish(msg)
            self.tick = k + 1

    def decoded_arm(self) -> tuple[np.ndarray, np.ndarray]:
        """(received arm commands (M, size), NaN for a wrong size; receive times (M,))."""
        size = self.states.spec.actions[0].shape[0]
        received = list(self.arm)
        values = np.full((len(received), size), np.nan)
        for j, (raw, _) in enumerate(received):
            data = deserialize_message(raw, Float64MultiArray).data
            if len(data) == size:
                values[j] = data
        return values, np.array([t for _, t in received])

# ============================================================================ analysis

def nearest(values: np.ndarray, table: np.ndarray, chunk: int = 4096
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values``: the index of the nearest row of ``table`` and the max-abs
    difference from it (NaN for rows holding NaN)."""
    index = np.zeros(len(values), dtype=np.int64)
    residual = np.full(len(values), np.nan)
    t2 = (table ** 2).sum(1)
    for s in range(0, len(values), chunk):
        v = values[s:s + chunk]
        d2 = (np.nan_to_num(v) ** 2).sum(1)[:, None] - 2.0 * np.nan_to_num(v) @ table.T + t2
        index[s:s + chunk] = i = d2.argmin(1)
        residual[s:s + chunk] = np.abs(v - table[i]).max(1)
    return index, residual

def percentiles_ms(seconds: np.ndarray) -> dict:
    if seconds.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                "mean_ms": float("nan")}
    p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(seconds.max() * 1e3),
            "mean_ms": float(seconds.mean() * 1e3)}

def analyse(driver: Driver, table: np.ndarray, warm_ticks: int, rate: float) -> dict:
    """Trace each arm command back to the tick it answers; latencies of the measured window.
    ``table``: the expected command of each state (N rows), then optionally of each state
    answered from the previous camera frame (N more)."""
    n = driver.states.n
    sent = driver.tick
    send = driver.send_times[:sent]
    lags = driver.lags[warm_ticks:sent]
    values, recv = driver.decoded_arm()
    index, residual = nearest(values, table)
    previous = index >= n
    index = index % n
    matched = residual <= MATCH_TOLERANCE          # False for NaN
    # the newest tick sent before the command arrived that carried state `index`
    newest = np.searchsorted(send, recv, side="right") - 1
    tick = newest - np.mod(newest - index, n)
    matched &= tick >= 0
    tick = np.where(matched, tick, -1)
    latency = recv - send[np.maximum(tick, 0)]
    window_start = send[warm_ticks] if sent > warm_ticks else np.inf
    in_window = matched & (tick >= warm_ticks)
    answers = np.bincount(tick[in_window] - warm_ticks, minlength=max(sent - warm_ticks, 0))
    window_ticks = max(sent - warm_ticks, 0)
    span = send[-1] - window_start if window_ticks > 1 else np.nan
    period = 1.0 / rate
    every = driver.states.frame_every
    by_frame = {} if every == 1 else {  # a slower camera: the states sent with a frame apart
        "latency_frame_states": percentiles_ms(latency[in_window & (tick % every == 0)]),
        "latency_other_states": percentiles_ms(latency[in_window & (tick % every != 0)])}
    return {
        **by_frame,
        "states_sent": window_ticks,
        "commands_received": int(in_window.sum()),
        "previous_frame_commands": int((in_window & previous).sum()),
        "unmatched": int((~matched & (recv >= window_start)).sum()),
        "missed_ticks": int((answers == 0).sum()),
        "answered_twice": int((answers > 1).sum()),
        "latency": percentiles_ms(latency[in_window]),
        "residual_max": float(residual[in_window].max()) if in_window.any() else float("nan"),
        "residual_median": float(np.median(residual[in_window])) if in_window.any()
        else float("nan"),
        "target_rate_hz": rate,
        "achieved_rate_hz": float((window_ticks - 1) / span) if window_ticks > 1 else 0.0,
        "publish_overruns": int((lags > period).sum()),
        "publish_lag_ms": {"p99": float(np.percentile(lags, 99) * 1e3) if lags.size else 0.0,
                           "max": float(lags.max() * 1e3) if lags.size else 0.0},
        "other_commands_received": driver.others,
        "window_s": float(span + period) if window_ticks > 1 else 0.0,
    }

# ============================================================================ measuring

def cpu_sample(node_pid: int) -> tuple[float, float, float, float]:
    """(time, CPU-seconds of the node, of this process, of every process).

    Every process: ``all_processes_cpu_seconds`` (those that ended in between counted too),
    kernel threads left out. Linux /proc; NaN elsewhere.
    """
    try:
        node, driver = stat_cpu_seconds(proc_stat(node_pid)), stat_cpu_seconds(proc_stat("self"))
    except (OSError, ValueError, IndexError):
        return time.monotonic(), float("nan"), float("nan"), float("nan")
    return time.monotonic(), node, driver, all_processes_cpu_seconds()[0]

@contextlib.contextmanager
def node_under_test(phase: str, kind: str, argv_or_params):
    """The node as a process, logging to results/logs/policy_latency/<phase>; always stopped,
    its log printed on a failure (after it is stopped, so that the log is complete)."""
    group = ProcessGroup(RESULTS_DIR / "logs" / "policy_latency" / phase)
    try:
        with group:
            if kind == POLICY:
                group.start_node(POLICY, params=argv_or_params)
            else:
                group.start(ECHO, argv_or_params)
            yield group
    except (ProcessDied, BenchmarkError):
        print(f"----- {phase}: log of {kind} -----\n{group.log(kind).rstrip()}", file=sys.stderr)
        raise

def measure(phase: str, kind: str, node_args, states: States, table: np.ndarray, rate: float,
            duration: float) -> dict:
    """One node against the driver: start-up, discovery, warm-up, the measured window."""
    driver = Driver(states)
    spinner = Spinner(driver)
    warm_ticks, ticks = round(WARMUP_S * rate), round((WARMUP_S + duration) * rate)
    stop = threading.Event()
    try:
        with node_under_test(phase, kind, node_args) as group:
            pid = group.procs[kind].pid
            if kind == POLICY:  # autostart: configured and active once __init__ returned
                client = driver.create_client(SetBool, f"/{POLICY}/enable")
                wait_until(group, client.service_is_ready, f"service /{POLICY}/enable",
                           STARTUP_TIMEOUT_S)
                driver.destroy_client(client)
            wait_until(group, lambda: all(p.get_subscription_count() > 0
                                          for p in driver.state_pubs.values()),
                       f"subscription of {kind} on every state topic", STARTUP_TIMEOUT_S)
            wait_until(group, lambda: all(driver.count_publishers(t) > 0
                                          for t in driver.command_topics),
                       f"publisher of {kind} on every command topic", STARTUP_TIMEOUT_S)
            driver.reset()
            thread = threading.Thread(target=driver.publish, args=(ticks, rate, stop),
                                      name="publisher", daemon=True)
            thread.start()
            cpu = {}
            try:
                while thread.is_alive():
                    group.check()
                    # the CPU window starts half a second before the measured one, so that the
                    # /proc scan (a few ms holding the GIL) delays no measured state
                    if "start" not in cpu and driver.tick > warm_ticks - rate / 2:
                        cpu["start"] = cpu_sample(pid)
                    thread.join(0.05)
                cpu["end"] = cpu_sample(pid)
                end = time.monotonic() + DRAIN_S
                while time.monotonic() < end:
                    group.check()
                    time.sleep(0.05)
            finally:
                stop.set()
                thread.join()
    finally:
        spinner.stop()
        driver.destroy_node()
    result = analyse(driver, table, warm_ticks, rate)
    if "start" in cpu:
        # shares of one CPU over the measured window; "others": every other process on the
        # machine (what disturbs the measurement)
        (t0, *c0), (t1, *c1) = cpu["start"], cpu["end"]
        node_cpu, driver_cpu, total = ((b - a) / (t1 - t0) * 100.0 for a, b in zip(c0, c1))
        result.update(node_cpu_percent=node_cpu, driver_cpu_percent=driver_cpu,
                      others_cpu_percent=total - node_cpu - driver_cpu)
    if kind == POLICY or driver.diagnostics:
        # the node's newest /diagnostics of the measured window (the policy node's
        # percentiles cover its last 4096 ticks)
        stop_time = cpu["end"][0]
        window = [v for t, v in driver.diagnostics if t <= stop_time]
        result["diagnostics"] = window[-1] if window else {}
    return result

def echo_argv(spec: Spec, folder: Path, encoder: dict | None = None) -> list[str]:
    """The echo node's command line, with the spec as a file (a checkpoint's spec need not be
    a built-in one); ``encoder``: its ``encoder_*`` parameters (the camera work alongside)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "echo_spec.yaml"
    path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), encoding="utf-8")
    argv = [sys.executable, str(Path(__file__).resolve().parent / "echo_node.py"), "--ros-args",
            "-r", f"__node:={ECHO}", "-p", f"spec:={path}"]
    for name, value in (encoder or {}).items():
        argv += ["-p", f"encoder_{name}:={value}"]
    return argv

def measure_policy(label: str, checkpoint: Path, rate: float, duration: float, n_states: int,
                   backend: str, camera_rate: float = 0.0, camera_encoding: str = "inline",
                   encoder_priority: str = "idle") -> dict:
    """Echo node, then policy node, on the same states; the backends of the policy. A
    ``camera_rate`` below ``rate``: a frame with every k-th state only."""
    policy, meta = load_checkpoint(checkpoint)
    spec = Spec.from_dict(meta["spec"])
    every = max(1, round(rate / camera_rate)) if camera_rate and spec.image_observations else 1
    if every > 1:   # whole cycles of the frames
        n_states = every * IMAGES * max(1, -(-n_states // (every * IMAGES)))
    states = make_states(spec, n_states, frame_every=every)
    tables = {ECHO: expected_echo(states), POLICY: expected_policy(policy, states)}
    result = {"spec": spec.name, "checkpoint": str(checkpoint), "rate_hz": rate,
              "duration_s": duration, "states": n_states,
              "camera_rate_hz": rate / every if spec.image_observations else None,
              "camera_encoding": camera_encoding if spec.image_observations else None,
              "separation": {k: separation(t) for k, t in tables.items()}}
    params = {"checkpoint": str(checkpoint), "allow_unlimited": True, "max_age_periods": 0.0,
              "trigger": "state", "backend": backend, "episode_topic": "",
              "camera_encoding": camera_encoding, "camera_encoder_priority": encoder_priority,
              "camera_frames": "latest" if every > 1 else "stamp"}
    runs = [(ECHO, ECHO, None), (POLICY, POLICY, None)]
    if every > 1 and camera_encoding != "inline":  # a state answered from the previous frame
        tables[POLICY] = np.concatenate([tables[POLICY], expected_policy(policy, states, 1)])
    if every > 1 and camera_encoding == "ahead":
        # the floor with the camera encoding's CPU work alongside (the echo node encoding each
        # frame as the policy node does): what the node adds beyond that work's own cost
        # (after the policy node: the encoder on the backend the node chose)
        runs.append((ECHO_ENCODER, ECHO, {"checkpoint": checkpoint, "priority": encoder_priority}))
    for key, kind, encoder in runs:
        if encoder is not None:
            chosen = (result[POLICY].get("diagnostics") or {}).get("backend")
            encoder["backend"] = chosen if chosen in BACKEND_CHOICES else backend
        phase = f"{label}-{key}"
        print(f"[bench] {label} policy ({spec.name}), {key}: start-up + {WARMUP_S:g} s warm-up "
              f"+ {duration:g} s at {rate:g} Hz", flush=True)
        node_args = params if kind == POLICY else echo_argv(
            spec, RESULTS_DIR / "logs" / "policy_latency" / phase, encoder)
        result[key] = measure(phase, kind, node_args, states, tables[kind], rate, duration)
    p = result[POLICY]["latency"]
    for key, name in ((ECHO, "policy_over_echo"), (ECHO_ENCODER, "policy_over_echo_encoder")):
        if key in result:
            e = result[key]["latency"]
            result[name] = {"p50": p["p50_ms"] / e["p50_ms"], "p99": p["p99_ms"] / e["p99_ms"]}
    return result

def measure_backends(checkpoint: Path) -> list[dict]:
    """``select_backend(policy, "auto")``'s measurements, each with its ratio to eager."""
    policy, _ = load_checkpoint(checkpoint)
    chosen, rows = select_backend(policy, "auto")
    eager = next((r["median_us"] for r in rows if r["backend"] == "eager"), float("nan"))
    return [dict(r, chosen=r["backend"] == chosen.kind,
                 over_eager=r["median_us"] / eager if "median_us" in r else None) for r in rows]

# ============================================================================ report

def report(r: dict) -> str:
    lines = [f"State-to-command latency over DDS ({r['rmw']}), node and driver in separate "
             f"processes; {r['cpus']} CPUs, backend {r['backend']}",
             "Checkpoints: " + ", ".join(
                 f"{label} {'untrained random weights' if random else 'as given'}"
                 for label, random in r["random_weights"].items() if r.get(label))
             + " (the latency does not depend on the weight values)"]
    head = (f"  {'node':13}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'sent':>9}{'answered':>10}"
            f"{'missed':>8}{'unmatched':>10}{'rate Hz':>9}{'late':>6}{'node CPU':>10}"
            f"{'others':>8}")
    for label in ("mlp", "image"):
        m = r.get(label)
        if not m:
            continue
        camera = "" if not m.get("camera_rate_hz") else (
            f", camera frames at {m['camera_rate_hz']:.1f} Hz (camera_encoding "
            f"{m['camera_encoding']})")
        lines += ["", f"{label.upper()} policy ({m['spec']}): states at {m['rate_hz']:g} Hz"
                      f"{camera}, {m['duration_s']:g} s measured after {WARMUP_S:g} s warm-up, "
                      f"{m['states']} distinct states", head]
        kinds = [k for k in (ECHO, ECHO_ENCODER, POLICY) if k in m]
        for kind in kinds:
            x = m[kind]
            lat, nan = x["latency"], float("nan")
            lines.append(f"  {kind:13}{lat['p50_ms']:8.3f}{lat['p99_ms']:8.3f}"
                         f"{lat['max_ms']:8.2f}{x['states_sent']:9d}"
                         f"{x['commands_received']:10d}{x['missed_ticks']:8d}"
                         f"{x['unmatched']:10d}{x['achieved_rate_hz']:9.1f}"
                         f"{x['publish_overruns']:6d}{x.get('node_cpu_percent', nan):9.0f}%"
                         f"{x.get('others_cpu_percent', nan):7.0f}%")
        if "latency_frame_states" in m[POLICY]:
            lines.append("  p50 / p99 ms of the states sent with a frame, then of the others: "
                         + ", ".join(f"{kind} {x['p50_ms']:.3f} / {x['p99_ms']:.3f}, "
                                     f"{y['p50_ms']:.3f} / {y['p99_ms']:.3f}"
                                     for kind in kinds
                                     for x, y in [(m[kind]["latency_frame_states"],
                                                   m[kind]["latency_other_states"])]))
        ratio = m["policy_over_echo"]
        lines.append(f"  {'policy/echo':13}{ratio['p50']:8.2f}{ratio['p99']:8.2f}"
                     "   (what the policy node adds over the DDS floor)")
        ratio = m.get("policy_over_echo_encoder")
        if ratio:
            d = m[ECHO_ENCODER].get("diagnostics") or {}
            lines.append(f"  {'policy/(e+enc)':13}{ratio['p50']:8.2f}{ratio['p99']:8.2f}"
                         "   (over the floor with the camera encoding's CPU work alongside: "
                         f"{d.get('frames_encoded', '?')} frames encoded by the echo node, "
                         f"{d.get('backend', '?')}, p50 {d.get('frame_encoding_p50_ms', '?')} "
                         f"ms, priority {d.get('camera_encoder_priority', '?')})")
        lines.append("  residuals (max |command - expected|): " + ", ".join(
            f"{kind} {m[kind]['residual_max']:.1e}" for kind in kinds)
            + f"; expected commands at least {min(m['separation'].values()):.1e} apart")
        lines.append("  driver: publish lag p99 " + ", ".join(
            f"{m[kind]['publish_lag_ms']['p99']:.2f} ms ({kind})" for kind in kinds)
            + "; CPU " + ", ".join(f"{m[kind].get('driver_cpu_percent', float('nan')):.0f}% "
                                   f"({kind})" for kind in kinds))
        d = m[POLICY].get("diagnostics") or {}
        if d:
            lines.append(f"  policy node's /diagnostics (its last 4096 ticks, stamp to publish): "
                         f"backend {d.get('backend', '?')}, latency p50 "
                         f"{d.get('latency_p50_ms', '?')} p99 {d.get('latency_p99_ms', '?')} ms, "
                         f"compute p50 {d.get('compute_p50_ms', '?')} p99 "
                         f"{d.get('compute_p99_ms', '?')} ms, missed_ticks "
                         f"{d.get('missed_ticks', '?')}, overruns {d.get('overruns', '?')}")
            if "frames_encoded" in d:
                lines.append(f"  camera: {d['frames_encoded']} frames encoded "
                             f"({d.get('camera_encoding')}), encoding p50 "
                             f"{d.get('frame_encoding_p50_ms', '?')} p99 "
                             f"{d.get('frame_encoding_p99_ms', '?')} ms; commands from the "
                             f"previous frame (the new one being encoded): "
                             f"{m[POLICY]['previous_frame_commands']}")
            if "camera_encoder_priority" in d:
                lines.append(f"  encoder thread at priority {d['camera_encoder_priority']}; "
                             f"frames encoded on the tick past camera_max_lag: "
                             f"{d.get('late_frames', '?')}")
            elif "late_frames" in d:
                lines.append(f"  frames finished on the tick past camera_max_lag: "
                             f"{d['late_frames']}")
    lines += ["", "Inference backends (select_backend \"auto\", one thread, median of 200 calls; "
                  "* = chosen)",
              f"  {'policy':8}{'backend':14}{'median us':>11}{'/ eager':>9}"]
    for label, rows in r["backends"].items():
        for row in rows:
            mark = "*" if row["chosen"] else " "
            if "median_us" in row:
                lines.append(f"  {label:8}{row['backend'] + mark:14}{row['median_us']:11.1f}"
                             f"{row['over_eager']:9.2f}")
            else:
                lines.append(f"  {label:8}{row['backend'] + mark:14}{'-':>11}{'-':>9}  "
                             f"({row['error']})")
    lines += ["",
              "  latency: receive of an arm command minus send of its state, both in the driver",
              "  sent: states of the measured window; answered: commands matched to them; "
              "missed: states never answered",
              "  unmatched: commands that fit no expected command; late: states published more "
              "than a period late",
              "  node CPU, others: share of one CPU taken by the node and by every process other "
              "than the node and the driver"]
    return "\n".join(lines)

# ============================================================================ main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive, default=60.0,
                        help="seconds measured per node for the MLP policy (default: 60)")
    parser.add_argument("--image-duration", type=float, default=30.0,
                        help="seconds measured per node for the image policy (default: 30; "
                             "0: leave it out)")
    parser.add_argument("--rate", type=positive, default=1000.0,
                        help="state rate for the MLP policy in Hz (default: 1000)")
    parser.add_argument("--image-rate", type=positive, default=30.0,
                        help="state rate for the image policy in Hz (default: 30)")
    parser.add_argument("--camera-rate", type=float, default=0.0,
                        help="camera frame rate for the image policy in Hz, below --image-rate "
                             "(a frame with every k-th state; default 0: one with every state)")
    parser.add_argument("--camera-encoding", default="inline", choices=CAMERA_ENCODINGS,
                        help="the policy node's camera_encoding (default: inline)")
    parser.add_argument("--camera-encoder-priority", default="idle", choices=ENCODER_PRIORITIES,
                        help="camera_encoding ahead: the policy node's camera_encoder_priority "
                             "(default: idle)")
    parser.add_argument("--checkpoint", type=Path,
                        help="MLP checkpoint (default: random weights, spec reach)")
    parser.add_argument("--image-checkpoint", type=Path,
                        help="image checkpoint (default: random weights, spec push_image)")
    parser.add_argument("--backend", default="auto",
                        choices=BACKEND_CHOICES,
                        help="the policy node's inference backend (default: auto)")
    return parser.parse_args(argv)

def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # as the policy node runs (its `threads` parameter)
    results = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "backend": args.backend,
               "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)"),
               "ros_domain_id": os.environ["ROS_DOMAIN_ID"], "warmup_s": WARMUP_S,
               "match_tolerance": MATCH_TOLERANCE,
               "random_weights": {"mlp": args.checkpoint is None,
                                  "image": args.image_checkpoint is None}}
    with tempfile.TemporaryDirectory(prefix="policy_latency-") as tmp:
        mlp = args.checkpoint or make_checkpoint("reach", Path(tmp) / "mlp")
        image = None
        if args.image_duration > 0:
            image = args.image_checkpoint or make_checkpoint("push_image", Path(tmp) / "image")
        results["mlp"] = measure_policy("mlp", mlp, args.rate, args.duration, STATES_LOW_DIM,
                                        args.backend)
        results["image"] = None
        if image is not None:
            results["image"] = measure_policy("image", image, args.image_rate,
                                              args.image_duration, STATES_IMAGE, args.backend,
                                              args.camera_rate, args.camera_encoding,
                                              args.camera_encoder_priority)
        print("[bench] inference backends", flush=True)
        results["backends"] = {"mlp": measure_backends(mlp)}
        if image is not None:
            results["backends"]["image"] = measure_backends(image)
    return results

def main(argv=None) -> int:
    args = parse_args(argv)
    return run_with_ros("policy_latency", run, report, args,
                        (ProcessDied, BenchmarkError, CheckpointError, SpecError, BackendError))

if __name__ == "__main__":
    sys.exit(main())
