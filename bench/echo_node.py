"""A bare echo node: the floor that the policy node's state-to-command latency is compared against.

It subscribes to the observation topics of a spec, with the QoS the policy node uses
(``STATE_QOS``), and answers each message on the spec's JointState topic at once with that
message's positions, cut into the spec's actions in order: for ``reach`` and ``push_image``,
position[:7] on /arm_controller/commands and [position[7]] on /gripper_controller/commands
(std_msgs/Float64MultiArray, ``COMMAND_PUB_QOS``, as the policy node publishes). The other state
topics (poses, camera images) are only received, as the policy node receives them; nothing is
decoded and nothing is computed. It runs with the nodes' own entry-point body
(``robot_imitation.nodes.common.run``), so it gets the executor the policy node gets.

With ``encoder_checkpoint`` (a camera policy's checkpoint) it also does the policy node's camera
work of ``camera_encoding: ahead``, and nothing else of the policy: each new frame is read from
its serialized message (resized to the spec's size) on the callback's thread and encoded by the
checkpoint's camera encoder on a thread of its own (``encoder_backend``, at
``encoder_priority``, as ``camera_encoder_priority``); a frame that comes while the previous
one of its camera is still in encoding is skipped. Its figures go to /diagnostics once a
second. The answers are the same: this is the floor with the encoding's CPU work alongside.

    python bench/echo_node.py --ros-args -p spec:=reach
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from robot_imitation.nodes.common import COMMAND_PUB_QOS, STATE_QOS, Param, declare_all, run

import numpy as np  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Float64MultiArray, Header  # noqa: E402

from robot_imitation.cdr import readers  # noqa: E402
from robot_imitation.deploy.backends import KINDS, select_backend  # noqa: E402
from robot_imitation.deploy.runtime import ENCODER_PRIORITIES, lower_this_thread  # noqa: E402
from robot_imitation.learning.checkpoint import load_checkpoint  # noqa: E402
from robot_imitation.observation import message_class  # noqa: E402
from robot_imitation.spec import Spec  # noqa: E402

JOINT_STATE = "sensor_msgs/msg/JointState"


class EchoNode(Node):
    NODE_NAME = "echo_node"
    PARAMETERS = (
        Param("spec", "reach", "observation/action spec (config/specs name or path): the topics "
              "to subscribe to and to answer on", read_only=True),
        Param("encoder_checkpoint", "", "a camera policy's checkpoint: its camera encoder runs on "
              "each new frame, on a thread of its own (empty: none)", read_only=True),
        Param("encoder_backend", "auto", "the camera encoder's inference backend (as the policy "
              "node's backend)", read_only=True, choices=("auto", *KINDS)),
        Param("encoder_priority", "idle", "the camera encoder thread's priority (as the policy "
              "node's camera_encoder_priority)", read_only=True, choices=ENCODER_PRIORITIES),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        p = declare_all(self, self.PARAMETERS)
        spec = Spec.load(p["spec"])
        topics = spec.observation_topics()
        joint_topics = [t for t, mtype in topics.items() if mtype == JOINT_STATE]
        if len(joint_topics) != 1:
            raise ValueError(f"spec '{spec.name}' must observe one JointState topic, not "
                             f"{joint_topics}")
        # (publisher, first position, end) per action, in the spec's order
        self.outputs, start = [], 0
        for f in spec.actions:
            pub = self.create_publisher(Float64MultiArray, f.topic, COMMAND_PUB_QOS)
            self.outputs.append((pub, start, start + f.shape[0]))
            start += f.shape[0]
        checkpoint = p["encoder_checkpoint"]
        self.encoder = FrameEncoder(spec, checkpoint, p["encoder_backend"],
                                    p["encoder_priority"]) if checkpoint else None
        self.latest = {}  # newest message per topic: received, not used
        for topic, mtype in topics.items():
            if self.encoder is not None and topic in self.encoder.topics:
                self.create_subscription(message_class(mtype), topic,
                                         lambda raw, t=topic: self.encoder.on_raw(t, raw),
                                         STATE_QOS, raw=True)
                continue
            callback = self._on_joints if topic in joint_topics else (
                lambda msg, t=topic: self.latest.__setitem__(t, msg))
            self.create_subscription(message_class(mtype), topic, callback, STATE_QOS)
        if self.encoder is not None:
            self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(1.0, self._report)

    def _on_joints(self, msg) -> None:
        position = msg.position  # array('d'): slices go into the command as they are
        for pub, a, b in self.outputs:
            pub.publish(Float64MultiArray(data=position[a:b]))

    def _report(self) -> None:
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{self.NODE_NAME}: camera",
                                  hardware_id=self.NODE_NAME)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in self.encoder.figures().items()]
        self._diagnostics.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def destroy_node(self):
        if self.encoder is not None:
            self.encoder.close()
        return super().destroy_node()


class FrameEncoder:
    """The policy node's camera work with ``camera_encoding: ahead``, without its control."""

    def __init__(self, spec: Spec, checkpoint: str, backend: str, priority: str):
        policy, _ = load_checkpoint(checkpoint)
        self.backend, _ = select_backend(policy, backend)
        if not self.backend.split:
            raise ValueError(f"{checkpoint}: its policy's cameras are not encoded apart from its "
                             f"head on the {self.backend.kind} backend")
        fields = [f for f in spec.observations if f.is_image]
        self.readers = readers(spec, fields)
        self.topics = set(self.readers)
        self.priority, self._wanted = "?", priority
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="camera-encoder",
                                        initializer=self._started)
        self._busy: dict = {}          # camera key -> its frame's job
        self._sent: dict = {}          # camera key -> the frame encoded last
        self._lock = threading.Lock()
        self.seconds: list = []
        self.skipped = 0

    def _started(self) -> None:
        self.priority = lower_this_thread(self._wanted)

    def on_raw(self, topic: str, raw: bytes) -> None:
        """A camera message: its frame read (and resized) here, encoded on the thread."""
        _, values = self.readers[topic].read(raw)
        for key, frame in values.items():
            last = self._sent.get(key)
            if last is not None and np.array_equal(last, frame):
                continue
            job = self._busy.get(key)
            if job is not None and not job.done():
                self.skipped += 1
                continue
            frame = self._sent[key] = np.array(frame)
            self._busy[key] = self._pool.submit(self._encode, key, frame)

    def _encode(self, key: str, frame: np.ndarray) -> None:
        t = time.perf_counter()
        self.backend.encode_frame(key, frame[None])
        with self._lock:
            self.seconds.append(time.perf_counter() - t)

    def figures(self) -> dict:
        with self._lock:
            seconds = np.array(self.seconds)
        out = {"backend": self.backend.kind, "camera_encoder_priority": self.priority,
               "frames_encoded": len(seconds), "frames_skipped": self.skipped}
        if len(seconds):
            out.update(frame_encoding_p50_ms=round(float(np.percentile(seconds, 50)) * 1e3, 3),
                       frame_encoding_p99_ms=round(float(np.percentile(seconds, 99)) * 1e3, 3))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def main(args=None) -> int:
    return run(EchoNode, args)


if __name__ == "__main__":
    sys.exit(main())
