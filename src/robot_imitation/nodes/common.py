"""Plumbing shared by the nodes: parameters with descriptors, QoS profiles, spinning, stamps."""
from __future__ import annotations

import os
import sys
import time

from ..paths import ensure_ros_environment

ensure_ros_environment()

import rclpy  # noqa: E402
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor  # noqa: E402
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile,  # noqa: E402
                       QoSReliabilityPolicy, qos_profile_sensor_data)

# Commands: RELIABLE, as forward_command_controller and joint_trajectory_controller subscribe.
COMMAND_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                         history=QoSHistoryPolicy.KEEP_LAST)
# Robot state (joint states, poses): RELIABLE keep-last, as joint_state_broadcaster publishes;
# a lost state would stall a lockstep loop. The history is deep because a keep-last writer
# drops samples a busy subscriber (a recorder) has not acknowledged yet: measured losses at
# 1 kHz with depth 10, none with deeper histories.
STATE_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                       history=QoSHistoryPolicy.KEEP_LAST)
# Camera images: sensor data (best effort, shallow): a late frame is worth less than a new one.
SENSOR_QOS = qos_profile_sensor_data
# Camera images for recording: reliable, with about a second of history. Best effort loses
# large frames between processes (measured: most 640x480 frames at 50 Hz), and a keep-last
# writer with depth 5 dropped frames a busy recorder had not acknowledged (none at depth 30).
# A reliable publisher still serves best-effort subscribers.
IMAGE_QOS = QoSProfile(depth=30, reliability=QoSReliabilityPolicy.RELIABLE,
                       history=QoSHistoryPolicy.KEEP_LAST)
# /clock, as rclpy's time source subscribes to it.
CLOCK_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                       history=QoSHistoryPolicy.KEEP_LAST)
# Latched status: late joiners get the newest value.
LATCHED_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
                         history=QoSHistoryPolicy.KEEP_LAST)


def declare(node, name: str, default, description: str, *, read_only: bool = False,
            min_value=None, max_value=None, choices=None):
    """Declare a parameter with a descriptor and return its value."""
    desc = ParameterDescriptor(description=description + (f" (one of: {', '.join(choices)})"
                                                          if choices else ""),
                               read_only=read_only)
    if min_value is not None or max_value is not None:
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(min_value if min_value is not None
                                                              else -2**31),
                                               to_value=int(max_value if max_value is not None
                                                            else 2**31 - 1), step=0)]
        elif isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(min_value if min_value is not None else -1e300),
                to_value=float(max_value if max_value is not None else 1e300), step=0.0)]
    value = node.declare_parameter(name, default, desc).value
    if choices and value not in choices:
        raise ValueError(f"parameter {name}={value!r}: must be one of {list(choices)}")
    return value


def to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_ns(stamp) -> int:
    """A builtin_interfaces/Time as integer nanoseconds (exact, for comparing stamps)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def take_state(node, assembler, topic: str, msg) -> bool:
    """Give a state message to ``assembler`` (an ``ObservationAssembler``); a malformed one is
    logged (throttled) and refused."""
    from ..spec import SpecError

    try:
        assembler.on_message(topic, msg)
    except SpecError as exc:
        node.get_logger().error(str(exc), throttle_duration_sec=5.0)
        return False
    return True


def state_to_answer(assembler, outputs) -> tuple | None:
    """(stamp, observation) of a complete state not answered before, or None. While none of
    ``outputs`` (the answering publishers) has a subscriber, the state is left unanswered: an
    answer nobody can receive yet is lost, and a lockstep bridge publishes an unanswered state
    again (one subscribed output is enough: a robot may have no gripper listener)."""
    if not any(p.get_subscription_count() for p in outputs):
        return None
    return assembler.synchronized()


SERVER_SETTLE = 0.25  # s: a new client's wait for its server to match its response reader


class ServiceCaller:
    """Service calls from a node that spins elsewhere (a background executor): one client per
    service for the node's life. The first time a client finds its server, it also gives the
    server a moment to discover the client's response reader: discovery is not symmetric, and
    an answer sent before the server knows the reader is lost (the RMW waits only 100 ms for
    it, which a loaded machine can exceed)."""

    def __init__(self, node):
        self.node = node
        self._clients: dict = {}  # name -> [client, settled]

    def ready(self, srv_type, name: str, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) for the server of ``name``; False if it did not appear."""
        if name not in self._clients:
            self._clients[name] = [self.node.create_client(srv_type, name), False]
        entry = self._clients[name]
        if not entry[0].wait_for_service(timeout_sec=timeout):
            return False
        if not entry[1]:
            time.sleep(SERVER_SETTLE)
            entry[1] = True
        return True

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0):
        """Call ``name`` and wait for the answer; ``TimeoutError`` when the server is missing
        or silent for ``timeout`` s."""
        if not self.ready(srv_type, name, timeout):
            raise TimeoutError(f"service {name} not available within {timeout} s")
        future = self._clients[name][0].call_async(request or srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} did not answer within {timeout} s")
            time.sleep(0.002)
        return future.result()


def from_sec(t: float, msg_time=None):
    from builtin_interfaces.msg import Time

    msg = msg_time or Time()
    ns = int(round(t * 1e9))
    msg.sec, msg.nanosec = divmod(ns, 1_000_000_000)
    return msg


def make_executor(kind: str = "events"):
    """The events executor is far faster than the single-threaded one for these nodes."""
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor

            return EventsExecutor()
        except ImportError:  # older distributions
            pass
    return SingleThreadedExecutor()


def spin(executor, context=None) -> None:
    """Spin until the context shuts down.

    A ``spin_once`` loop rather than ``spin()``: the events executor of some rclpy releases
    neither runs callbacks nor returns on shutdown from ``spin()``.
    """
    ok = (lambda: rclpy.ok(context=context))
    while ok():
        try:
            executor.spin_once(timeout_sec=0.1)
        except Exception:  # noqa: BLE001
            # A signal can shut the context down while a callback is being dispatched; the
            # events executor then raises from inside its dispatch (seen: "Unable to convert
            # call argument"). That is a shutdown, not a failure; anything else propagates.
            if ok():
                raise
            return


def run(node_cls, args=None, executor=os.environ.get("ROBOT_IMITATION_EXECUTOR", "events")) -> int:
    """Entry point body: init, spin until SIGINT/SIGTERM, then shut the node down cleanly.

    rclpy's signal handlers turn both signals into a context shutdown.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    code = 0
    try:
        node = node_cls()
        # `executor`: a kind ("events", "single"), or a function of the node returning one.
        exe = make_executor(executor(node) if callable(executor) else executor)
        exe.add_node(node)
        spin(exe)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report start-up errors clearly, then exit non-zero
        if node is not None:
            node.get_logger().fatal(f"{type(exc).__name__}: {exc}")
        else:
            print(f"[{getattr(node_cls, 'NODE_NAME', node_cls.__name__)}] fatal: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
