"""Plumbing shared by the nodes: parameters with descriptors, QoS profiles, spinning, stamps."""
from __future__ import annotations

import array
import os
import re
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass

from ..paths import ensure_ros_environment

ensure_ros_environment()

import rclpy  # noqa: E402
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor  # noqa: E402
from std_msgs.msg import Float64MultiArray, MultiArrayDimension  # noqa: E402

from ..cdr import CdrError, float64_multi_array, status_episode  # noqa: E402
from ..pairing import stamp_label, stamp_of  # noqa: E402
from ..observation import deserialized  # noqa: E402
from ..spec import SpecError  # noqa: E402
from rclpy.executors import (Executor, ExternalShutdownException,  # noqa: E402
                              SingleThreadedExecutor)
from rclpy.task import Future  # noqa: E402
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
# Camera images of a lockstep bridge: reliable keep-all. The simulation runs as fast as its
# controller answers (hundreds of frames a second), so 30 frames are a fraction of a second of
# a busy recorder: a CI run lost one frame of 49 with two test workers loading two cores. A
# keep-all writer keeps every frame until each reliable reader has acknowledged it (its memory
# grows with the reader's lag; what happens at the middleware's resource limits is not
# measured here).
LOCKSTEP_IMAGE_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                history=QoSHistoryPolicy.KEEP_ALL)
# Publishers of what a recorder takes (the robot state, commands, the episode status, the clock)
# keep about a second of a fast lockstep simulation. A stopped or starved reader cannot take what
# arrives; its transport's queue overflows, and a keep-last writer can send again only what its
# history still holds. A lockstep simulation runs as fast as its controller answers (hundreds of
# states a second), so a recorder that fell behind lost data: a CI run's bag held 85 of 101
# commands (history 10), 78 of 101 statuses (1) and 79 of 101 clock ticks (best effort), with
# the joint states (100) complete. A recorder stopped through a whole push episode (201 states)
# lost some of every topic with those histories, none with this one
# (test_recording.py::test_a_stalled_recorder_loses_nothing_of_a_lockstep_episode). Readers keep
# their own, shallower, histories.
PUBLISHER_DEPTH = 1000


def publisher_qos(profile: QoSProfile) -> QoSProfile:
    """``profile`` with a publisher's history (``PUBLISHER_DEPTH``, keep-last)."""
    return QoSProfile(depth=max(profile.depth, PUBLISHER_DEPTH), history=profile.history,
                      reliability=profile.reliability, durability=profile.durability)


STATE_PUB_QOS = publisher_qos(STATE_QOS)
COMMAND_PUB_QOS = publisher_qos(COMMAND_QOS)
# /clock: reliable, so that a recorder can take every tick; rclpy's time source subscribes best
# effort, which a reliable publisher serves too.
CLOCK_QOS = publisher_qos(QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                     history=QoSHistoryPolicy.KEEP_LAST))
# Latched status: late joiners get the newest value.
LATCHED_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
                         history=QoSHistoryPolicy.KEEP_LAST)
# Readers of the episode status that must see every status in order (one comes with each
# state): latched like LATCHED_QOS, with the state's depth.
STATUS_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
                        history=QoSHistoryPolicy.KEEP_LAST)
# The episode status's publisher (one status with each state): a late joiner is sent the history
# too, up to PUBLISHER_DEPTH statuses (a recorder subscribing at ~/start records none of them:
# recording.latched).
STATUS_PUB_QOS = publisher_qos(STATUS_QOS)


@dataclass(frozen=True)
class Param:
    """One node parameter: the single declaration its descriptor, its checks and the node's
    ``--help`` come from. ``default`` is the value, or a ``Parameter.Type`` for a parameter
    without one (it then stays unset until given)."""

    name: str
    default: object
    description: str
    read_only: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple = ()
    # a parameter that stands for a settings dataclass's field (``params_of``): the field's
    # limits, checked on the value as the setting takes it (``setting_value``)
    limits: object = None
    # a check beyond the limits, e.g. that a named task exists: a function of the value as the
    # setting takes it, returning why it is not allowed (one line naming it) or None
    check: object = None

    def descriptor(self) -> ParameterDescriptor:
        desc = ParameterDescriptor(description=self.description + (
            f" (one of: {', '.join(map(str, self.choices))})" if self.choices else ""),
            read_only=self.read_only)
        lo, hi, d = self.min_value, self.max_value, self.default
        if (lo is not None or hi is not None) and not isinstance(d, bool):
            if isinstance(d, int):
                # an open end is the parameter type's own (int64), as --help's "inf" says
                desc.integer_range = [IntegerRange(
                    from_value=int(lo if lo is not None else -2**63),
                    to_value=int(hi if hi is not None else 2**63 - 1), step=0)]
            elif isinstance(d, float):
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(lo if lo is not None else -1e300),
                    to_value=float(hi if hi is not None else 1e300), step=0.0)]
        return desc

    def declare(self, node):
        """Declare on ``node``; returns the value (None while a typed parameter is unset)."""
        # a copy of a list default: rclpy hands the default object itself back as the value,
        # and the table is shared by every node of the class
        default = list(self.default) if isinstance(self.default, list) else self.default
        self._float_from_int(node)
        self._empty_list(node)
        value = node.declare_parameter(self.name, default, self.descriptor()).value
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def _float_from_int(self, node) -> None:
        """A whole number given at start (`-p lr:=1`, `lr: 1` in a parameter file, a launch
        argument `beta:=1`) for a floating-point parameter is taken as that float, as the
        command line and `--config` take it; rcl would refuse the node's start over its type."""
        from rclpy.parameter import Parameter

        given = getattr(node, "_parameter_overrides", {}).get(self.name)
        if given is None:
            return
        default, T = self.default, Parameter.Type
        declared = default if isinstance(default, T) else T.from_parameter_value(default)
        if declared == T.DOUBLE and given.type_ == T.INTEGER:
            node._parameter_overrides[self.name] = Parameter(self.name, value=float(given.value))
        elif declared == T.DOUBLE_ARRAY and given.type_ == T.INTEGER_ARRAY:
            node._parameter_overrides[self.name] = Parameter(
                self.name, value=[float(v) for v in given.value])

    def _empty_list(self, node) -> None:
        """An empty list or mapping given at start (`sources: []` in a parameter file, `-p
        "hidden:=[]"`) reaches rclpy as no value at all: the parameter stayed unset, and the
        node failed where it read it. It is read as the empty value where there is one (a list
        of strings: [''], a mapping's YAML text: '', see ``params_of``); another parameter with
        a default is refused, naming it."""
        from rclpy.parameter import Parameter

        T = Parameter.Type
        given = getattr(node, "_parameter_overrides", {}).get(self.name)
        if given is None or given.type_ != T.NOT_SET or isinstance(self.default, T):
            return
        declared = T.from_parameter_value(self.default)
        limits = self.limits
        if declared == T.STRING_ARRAY or (limits is not None and limits.kind is dict):
            empty = [""] if declared == T.STRING_ARRAY else ""
            node._parameter_overrides[self.name] = Parameter(self.name, value=empty)
            return
        why = limits.problem([]) if limits is not None else None
        kinds = {T.BOOL: "true or false", T.INTEGER: "an integer", T.DOUBLE: "a number",
                 T.STRING: "a string", T.INTEGER_ARRAY: "a non-empty list of integers",
                 T.DOUBLE_ARRAY: "a non-empty list of numbers",
                 T.BOOL_ARRAY: "a non-empty list of true or false"}
        raise ValueError(f"parameter {self.name}=[]: must be "
                         f"{why or kinds.get(declared, 'a value')}")

    def problem(self, value) -> str | None:
        """Why ``value`` is not allowed (choices, a setting's limits, ``check``; ranges are
        checked by rcl), or None."""
        if self.choices and value is not None and value not in self.choices:
            return (f"parameter {self.name}={value!r}: must be one of "
                    f"{', '.join(map(str, self.choices))}")
        if self.limits is not None and value is not None:
            try:
                why = self.limits.problem(self.setting_value(value))
            except ValueError as exc:
                why = str(exc)
            if why:
                # an array parameter's value comes as array('q', [...]): shown as a list
                shown = list(value) if isinstance(value, array.array) else value
                return f"parameter {self.name}={shown!r}: must be {why}"
        if self.check is not None and value is not None:
            return self.check(self.setting_value(value))
        return None

    def setting_value(self, value):
        """A parameter's value as the setting it stands for takes it: '' is None for an
        optional string, [''] an empty list of strings, a YAML text a mapping."""
        limits = self.limits
        if limits is None or value is None:
            return value
        if limits.kind is str and limits.optional:
            return value or None
        if limits.kind is list:
            items = list(value)
            if limits.item is not None and limits.item.kind is str:
                return [v for v in items if v != ""]
            if limits.item is not None and limits.item.kind is int:
                return [int(v) if isinstance(v, int) else v for v in items]
            return items
        if limits.kind is dict:
            import yaml

            from ..paths import yaml_load

            if not str(value).strip():
                return {}
            try:
                data = yaml_load(value)
            except yaml.YAMLError:
                raise ValueError("a YAML mapping (e.g. '{width: 64}')") from None
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ValueError("a YAML mapping (e.g. '{width: 64}')")
            return data
        return value

    def help(self) -> str:
        from rclpy.parameter import Parameter

        if isinstance(self.default, Parameter.Type):
            kind, default = self.default.name.lower(), "unset"
        else:
            kind = type(self.default).__name__
            kind = {"str": "string", "float": "double", "int": "integer", "bool": "bool",
                    "list": "array"}.get(kind, kind)
            default = repr(self.default)
        flags = [kind, f"default {default}"]
        if self.read_only:
            flags.append("read-only")
        if self.min_value is not None or self.max_value is not None:
            flags.append(f"range {self.min_value if self.min_value is not None else '-inf'}.."
                         f"{self.max_value if self.max_value is not None else 'inf'}")
        if self.choices:
            flags.append("one of " + ", ".join(map(str, self.choices)))
        import textwrap

        text = textwrap.fill(self.description, 96, initial_indent=" " * 6,
                             subsequent_indent=" " * 6)
        return f"  {self.name} ({'; '.join(flags)})\n{text}"


def params_of(cls, choices: dict | None = None) -> tuple:
    """A ``Param`` for each field of the settings dataclass ``cls``, from the field: its name,
    default, description and limits (range, choices, and the rest checked on every value).
    ``choices``: {name: values} for a field whose allowed values are known only at run time.

    A parameter cannot be None, an empty list or a mapping: an optional string's None is '',
    an empty list of strings is [''], and a mapping is a YAML text ('' for none)."""
    import dataclasses

    from ..settings import default_of

    out = []
    for f in dataclasses.fields(cls):
        limits = f.metadata.get("limits")
        default = default_of(cls, f.name)
        if default is None:
            default = ""
        elif isinstance(default, dict):
            import yaml

            default = yaml.safe_dump(default, default_flow_style=True).strip() if default else ""
        elif isinstance(default, (list, tuple)):
            default = list(default) or [""]
        low = high = None
        if limits is not None and limits.kind in (int, float):
            low, high = limits.low, limits.high
        allowed = tuple((choices or {}).get(f.name, ())) or \
            (tuple(limits.choices) if limits is not None else ())
        out.append(Param(f.name, default, f.metadata.get("help", ""), min_value=low,
                         max_value=high, choices=allowed, limits=limits))
    return tuple(out)


def limit_parameters(base: str) -> tuple:
    """The parameters that replace part of a node's action limits (``deploy.limits``): the
    policy node's and the command mux's. ``base``: whose limits they replace."""
    from rclpy.parameter import Parameter

    return (
        Param("action_lower", Parameter.Type.DOUBLE_ARRAY, "lower limit per action value (1 or "
              f"action_dim values); replaces that part of {base} limits", read_only=True),
        Param("action_upper", Parameter.Type.DOUBLE_ARRAY, "upper limit per action value "
              "(replaces that part)", read_only=True),
        Param("max_delta", Parameter.Type.DOUBLE_ARRAY, "largest change per tick per action "
              "value, 0: none (replaces that part)", read_only=True),
    )


def limit_args(values: dict) -> dict:
    """The limit parameters' values as ``runtime_limits`` takes them (unset: None)."""
    def given(name):
        v = values[name]
        return list(v) if v is not None and len(v) else None

    return {"lower": given("action_lower"), "upper": given("action_upper"),
            "max_delta": given("max_delta"), "allow_unlimited": values["allow_unlimited"]}


def declare_all(node, params) -> dict:
    """Declare ``params`` (``Param``) on ``node``, refuse later values that break their choices
    (ranges are enforced by rcl from the descriptors); returns {name: value}."""
    table = {p.name: p for p in params}

    def check(changes):
        from rcl_interfaces.msg import SetParametersResult

        for change in changes:
            param = table.get(change.name)
            problem = param.problem(change.value) if param else None
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    values = {p.name: p.declare(node) for p in params}
    node.add_on_set_parameters_callback(check)
    return values


def parameter_help(node_cls) -> str:
    """The text of ``<node> --help``: what the node is and its parameters."""
    doc = (sys.modules[node_cls.__module__].__doc__ or "").strip().splitlines()
    name = getattr(node_cls, "NODE_NAME", node_cls.__name__)
    lines = [f"{name}: {doc[0] if doc else ''}", "",
             "usage: ros2 run robot_imitation <executable> --ros-args [-p name:=value ...] "
             "[--params-file file.yaml]", "", "parameters:"]
    lines += [p.help() for p in getattr(node_cls, "PARAMETERS", ())]
    return "\n".join(lines)


def help_requested(argv) -> bool:
    """Whether a command line asks for ``--help`` (or ``-h``): among the program's own
    arguments, before ``--ros-args``."""
    argv = list(argv)
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    return "-h" in own or "--help" in own


def declare(node, name: str, default, description: str, *, read_only: bool = False,
            min_value=None, max_value=None, choices=None):
    """Declare one parameter with a descriptor and return its value (see ``Param``)."""
    return Param(name, default, description, read_only, min_value, max_value,
                 tuple(choices or ())).declare(node)


def episode_of_status(raw: bytes) -> tuple[int, str | None]:
    """(stamp in ns, episode or None) of an episode status received raw (a subscription with
    ``raw=True`` on a ``DiagnosticArray`` topic): read from its CDR bytes
    (``cdr.status_episode``), or deserialized when the reader does not take them. ``SpecError``
    (one line) for bytes that are no ``DiagnosticArray``: the caller drops them, as it drops a
    malformed state (``take_state``)."""
    try:
        return status_episode(raw)
    except CdrError as exc:
        msg = deserialized(raw, "diagnostic_msgs/msg/DiagnosticArray", exc)  # or SpecError
        return stamp_ns(msg.header.stamp), next(
            (kv.value for st in msg.status for kv in st.values if kv.key == "episode"), None)


def to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_ns(stamp) -> int:
    """A builtin_interfaces/Time as integer nanoseconds (exact, for comparing stamps)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class LogThrottle:
    """Whether a throttled log line is due, decided with one clock read: ``due()`` is True at
    most once per ``period`` seconds (monotonic), the first time at once. For what may happen
    on every tick or message: rclpy's own ``throttle_duration_sec`` finds its caller with
    ``inspect`` (source lines, real paths) on each call, logged or not, about 0.5 ms a call
    here, so a 1 kHz loop that clamps its commands, or a stream of malformed messages, overran
    with it. The line is built and rclpy called only when ``due()``."""

    __slots__ = ("period", "_next")

    def __init__(self, period: float):
        self.period = period
        self._next = float("-inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.period
        return True


# per node, by topic: the malformed messages' log lines (take_state, log_malformed)
_MALFORMED_LOGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def log_malformed(node, text: str, topic: str = "") -> None:
    """Say that a malformed message was dropped: at most one line every 5 s per node and
    ``topic`` (a stream of them, each a callback, must not flood the log or pay a logger call
    each; nor hide another topic's)."""
    throttles = _MALFORMED_LOGS.get(node)
    if throttles is None:
        throttles = _MALFORMED_LOGS[node] = {}
    throttle = throttles.get(topic)
    if throttle is None:
        throttle = throttles[topic] = LogThrottle(5.0)
    if throttle.due():
        node.get_logger().error(text)


def take_message(node, raw: bytes, mtype: str, topic: str, cls=None):
    """``raw`` (bytes received on ``topic``) as a ``mtype`` message, or None for bytes that are
    none: said (``log_malformed``, naming the topic, the type and the size) and dropped."""
    try:
        return deserialized(raw, mtype, cls=cls)
    except SpecError as exc:
        log_malformed(node, f"{topic}: {exc}: dropped", topic)
        return None


def checked_subscription(node, cls, topic: str, callback, qos, with_info: bool = False,
                         **kwargs):
    """A subscription of ``cls`` messages on ``topic`` whose bytes are deserialized here, so
    that bytes that are no message (a raw publisher's, a broken driver's) are said and dropped
    (``log_malformed``: one line every 5 s at most, naming the topic, the type and the size)
    instead of being lost in the middleware without a word. ``callback`` gets the message (and
    the ``MessageInfo`` with ``with_info``), as from a typed subscription."""
    mtype = "{}/msg/{}".format(cls.__module__.split(".")[0], cls.__name__)
    name = node.resolve_topic_name(topic)

    if with_info:
        def on_raw(raw: bytes, info) -> None:
            msg = take_message(node, raw, mtype, name, cls)
            if msg is not None:
                callback(msg, info)
    else:
        def on_raw(raw: bytes) -> None:
            msg = take_message(node, raw, mtype, name, cls)
            if msg is not None:
                callback(msg)
    return node.create_subscription(cls, topic, on_raw, qos, raw=True, **kwargs)


def take_status(node, topic: str, raw: bytes) -> tuple[int, str | None] | None:
    """(stamp in ns, episode or None) of an episode status received raw on ``topic``
    (``episode_of_status``), or None for bytes that are none: dropped, and logged at most every
    5 s (a lockstep bridge publishes a state and its status again when no answer came)."""
    try:
        return episode_of_status(raw)
    except SpecError as exc:
        log_malformed(node, f"{topic}: {exc}", topic)
        return None


def take_state(node, assembler, topic: str, msg) -> bool:
    """Give a state message (or its serialized bytes) to ``assembler`` (an
    ``ObservationAssembler``); a malformed one is refused, and logged at most every 5 s."""
    try:
        if isinstance(msg, bytes):  # a raw subscription's serialized message
            assembler.on_raw(topic, msg)
        else:
            assembler.on_message(topic, msg)
    except SpecError as exc:
        log_malformed(node, str(exc), topic)
        return False
    return True


def answer(values, stamp: float | None = None, msg=None):
    """A ``std_msgs/Float64MultiArray`` command of ``values`` answering the state stamped
    ``stamp`` (seconds; None: a command that answers no particular state). A lockstep bridge
    pairs it with that state exactly (``bridge.stepper``); other controllers read ``data``
    only. ``msg``: a message to fill instead of a new one."""
    msg = msg or Float64MultiArray()
    msg.data = values.tolist() if hasattr(values, "tolist") else [float(v) for v in values]
    n = len(msg.data)
    msg.layout.dim = [] if stamp is None else [
        MultiArrayDimension(label=stamp_label(stamp_of(stamp)), size=n, stride=n)]
    return msg


def answer_bytes(values, stamp: float | None = None) -> bytes:
    """``answer(values, stamp)`` as CDR bytes, for a raw publish (``cdr``)."""
    return float64_multi_array(values, None if stamp is None else stamp_label(stamp_of(stamp)))


def state_to_answer(assembler, outputs) -> tuple | None:
    """(stamp, observation) of a complete state not answered before, or None. While none of
    ``outputs`` (the answering publishers) has a subscriber, the state is left unanswered: an
    answer nobody can receive yet is lost, and a lockstep bridge publishes an unanswered state
    again (one subscribed output is enough: a robot may have no gripper listener). The
    subscribers are counted once a state is complete, not for each of its parts."""
    if not assembler.complete() or not any(p.get_subscription_count() for p in outputs):
        return None
    return assembler.synchronized()


class LastAnswer:
    """What a lockstep controller published answering the state it answered last, to publish
    again when that state comes again whole (``ObservationAssembler.repeated``). A controller
    answers a state once, but the bridge publishes a state again when no answer reached it in
    ``lockstep_republish`` s: an answer was lost, or was sent while only another reader of the
    command topic (a recorder, ``ros2 topic echo``) was matched yet, not the bridge. Without a
    second answer the simulation would wait for ever."""

    __slots__ = ("stamp", "sent", "resent")

    def __init__(self):
        self.stamp = None  # the state answered last
        self.sent: list = []  # (publisher, message or serialized bytes) answering it
        self.resent = 0  # states answered again

    def publish(self, pub, msg, stamp) -> None:
        """Publish ``msg`` on ``pub`` as (part of) the answer to the state stamped ``stamp``."""
        if stamp != self.stamp:
            self.stamp = stamp
            self.sent.clear()
        self.sent.append((pub, msg))
        pub.publish(msg)

    def again(self, node, stamp) -> None:
        """The state stamped ``stamp`` came again: publish its answer again, if it was the
        last one sent (a state handed out but not answered yet has none), and say so."""
        if stamp is None or stamp != self.stamp or not self.sent:
            return
        for pub, msg in self.sent:
            pub.publish(msg)
        self.resent += 1
        node.get_logger().info(f"state {float(stamp):.3f} s published again: answered again "
                               f"({self.resent} in all)", throttle_duration_sec=10.0)


class ServiceCaller:
    """Service calls from a node that spins elsewhere (a background executor): one client per
    service for the node's life. A request may reach a server before the server has discovered
    the client's response reader; the suite's Fast DDS profile (``paths.dds_profile``) has the
    server's answer wait for it (Fast DDS's own 100 ms lost answers on a loaded machine)."""

    def __init__(self, node):
        self.node = node
        self._clients: dict = {}  # name -> client

    def ready(self, srv_type, name: str, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) for the server of ``name``; False if it did not appear."""
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
        return self._clients[name].wait_for_service(timeout_sec=timeout)

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0):
        """Call ``name`` and wait for the answer; ``TimeoutError`` when the server is missing
        or silent for ``timeout`` s."""
        if not self.ready(srv_type, name, timeout):
            raise TimeoutError(f"service {name} not available within {timeout} s")
        future = self._clients[name].call_async(request or srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} did not answer within {timeout} s")
            time.sleep(0.002)
        return future.result()


# The /diagnostics status in which a node reports its publishers' matched subscriptions
# (``MatchedReport``), named "<node's full name>: <this>".
MATCHED_STATUS = "subscriptions matched"


class MatchedReport:
    """How many subscriptions each of a node's publishers has matched, on /diagnostics: a status
    named ``"<node's full name>: subscriptions matched"`` whose values are (topic, count), sent
    when a count changes (looked at every ``check`` s, on the steady clock) and every ``period``
    s. ``publishers``: the publishers, or a callable returning them (a lifecycle node's come and
    go); a topic published twice reports the lower count.

    DDS matches a new subscription with a publisher on each side on its own: on the
    subscription's side as soon as its participant knows the publisher, on the publisher's once
    the publisher's participant has processed the subscription's announcement. A volatile
    message published between the two never reaches the subscription. A recorder's ~/start
    waits until the publishers of its topics that report here count its subscriptions (a CI
    run's bag lacked its first episode's tick-0 state on every state topic: the bridge was
    reset right after the recorder subscribed)."""

    def __init__(self, node, publishers, diag_pub, check: float = 0.1, period: float = 1.0):
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        self._node = node
        self._publishers = publishers if callable(publishers) else \
            (lambda pubs=tuple(publishers): pubs)
        self._pub = diag_pub
        self._msg = DiagnosticArray(status=[DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f"{node.get_fully_qualified_name()}: "
            f"{MATCHED_STATUS}", message="matched subscriptions by topic")])
        self._counts = None
        self._sent = 0.0
        self._period = period
        steady_timer(node, check, self.check)

    def counts(self) -> dict:
        """{topic: matched subscriptions} of the publishers now."""
        out: dict = {}
        for pub in self._publishers():
            n = pub.get_subscription_count()
            out[pub.topic_name] = min(n, out.get(pub.topic_name, n))
        return out

    def check(self) -> None:
        """Report the counts if one changed or ``period`` s passed since the last report."""
        from diagnostic_msgs.msg import KeyValue

        counts = self.counts()
        now = time.monotonic()
        if counts == self._counts and now - self._sent < self._period:
            return
        self._counts, self._sent = counts, now
        self._msg.header.stamp = self._node.get_clock().now().to_msg()
        self._msg.status[0].values = [KeyValue(key=t, value=str(n)) for t, n in counts.items()]
        self._pub.publish(self._msg)


def matched_reports(msg, into: dict) -> None:
    """The counts of the ``MatchedReport`` statuses in a /diagnostics message, into ``into``:
    {(node's full name, topic): matched subscriptions}."""
    for status in msg.status:
        node, _, what = status.name.rpartition(": ")
        if what != MATCHED_STATUS:
            continue
        for kv in status.values:
            try:
                into[(node, kv.key)] = int(kv.value)
            except ValueError:
                continue


def full_name(info) -> str:
    """The full name of the node behind an endpoint's info (``/ns/name``, ``/name``)."""
    return f"{info.node_namespace.rstrip('/')}/{info.node_name}"


def uncounted(node, topics, reports: dict) -> list:
    """Of the publishers of ``topics`` that report their matched subscriptions
    (``MatchedReport``; ``reports``: as ``matched_reports`` makes them), those counting fewer
    subscriptions than ``node``'s graph shows on the topic with a QoS they can match:
    ``["<topic>: <node> counts <n> of <m>", ...]``. Until a publisher counts a subscription,
    what it publishes may miss it (matching is per side); publishers that do not report are
    not looked at."""
    from rclpy.qos import QoSCompatibility, qos_check_compatible

    short = []
    for topic in topics:
        readers = None
        for info in node.get_publishers_info_by_topic(topic):
            name = full_name(info)
            n = reports.get((name, topic))
            if n is None:
                continue
            readers = readers or node.get_subscriptions_info_by_topic(topic)
            seen = sum(qos_check_compatible(info.qos_profile, r.qos_profile)[0]
                       != QoSCompatibility.ERROR for r in readers)
            if n < seen:
                short.append(f"{topic}: {name} counts {n} of {seen}")
    return short


def steady_timer(node, period: float, callback, **kwargs):
    """A timer on the steady clock, not the node's: watchdogs and diagnostics keep
    running under ``use_sim_time`` while simulated time stands still (a paused bridge, a
    lockstep waiting for an answer)."""
    from rclpy.clock import Clock, ClockType

    return node.create_timer(period, callback, clock=Clock(clock_type=ClockType.STEADY_TIME),
                             **kwargs)


def from_sec(t: float, msg_time=None):
    from builtin_interfaces.msg import Time

    msg = msg_time or Time()
    ns = int(round(t * 1e9))
    msg.sec, msg.nanosec = divmod(ns, 1_000_000_000)
    return msg


def make_executor(kind: str = "events", context=None):
    """The events executor is far faster than the single-threaded one for these nodes."""
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor

            return EventsExecutor(context=context)
        except ImportError:  # older distributions
            pass
    return SingleThreadedExecutor(context=context)


class ShutdownRequest:
    """SIGINT, SIGTERM and SIGHUP as a request to stop, handled by the node's own code.

    The first signal asks the spin loop to end; the node then closes (a recorder finishes its
    open bag) and exits 0. Later signals are noted and ignored: a Ctrl-C under ``ros2 launch``
    reaches each node twice (the terminal's SIGINT, then launch's own), and a signal must never
    interrupt a shutdown half way. SIGKILL remains the way to abort. SIGHUP comes when the
    terminal a node runs in closes: its default action killed the node by the signal, its
    ``close()`` never run (a keyboard teleop's terminal mode, a recorder's open bag). A SIGHUP
    ignored when the process started (``nohup``) stays ignored.

    A node started by the suite's launcher (``ros.launcher.ProcessGroup``, which names itself
    in ``PARENT_ENV``) also stops so when that process is gone: the launcher runs its nodes in
    sessions of their own, so that a Ctrl-C reaches the launcher only and it stops them in
    order, and a launcher killed outright (SIGKILL, the OOM killer, a benchmark's SIGTERM)
    could not stop them. The spin loop looks every 0.1 s.

    rclpy's own handlers are not installed (``SignalHandlerOptions.NO``): they shut the context
    down from inside the signal and raise ``KeyboardInterrupt`` wherever the main thread happens
    to be, which a second signal turned into an interrupted ``close()`` or an abort inside a C++
    callback.
    """

    def __init__(self, name: str):
        self.name = name
        self.event = threading.Event()
        self.signals = 0
        self.parent = _launcher_parent()
        # called (in the signal handler) at the first signal: a node whose own thread holds a
        # lock for long (a bridge's multi-tick ~/step) stops that work at once, so that the
        # spin loop, which may be waiting on the lock in a callback, can end
        self.on_request: list = []

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # nohup's stays
            signal.signal(signal.SIGHUP, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        if self.signals == 1:
            self.event.set()
            for callback in self.on_request:
                callback()
        elif self.signals == 2:
            _say(f"[{self.name}] already shutting down: {signal.Signals(signum).name} "
                 "ignored (SIGKILL aborts)\n")

    @property
    def requested(self) -> bool:
        if not self.event.is_set() and self.parent is not None and os.getppid() != self.parent:
            _say(f"[{self.name}] the process that started it ({self.parent}) is gone: "
                 "shutting down\n")
            self.event.set()
        return self.event.is_set()


def _say(text: str) -> None:
    """A line on stderr from a signal handler: not at all where stderr is gone (the closed
    terminal of a SIGHUP answers EIO)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _launcher_parent() -> int | None:
    """The pid of the suite's launcher that started this process (``PARENT_ENV``) while it is
    this process's parent; None otherwise (ros2 launch, a shell, a variable inherited from
    further up)."""
    from ..ros.launcher import PARENT_ENV

    try:
        pid = int(os.environ.get(PARENT_ENV, ""))
    except ValueError:
        return None
    return pid if pid == os.getppid() else None


class SpinSlices:
    """Callbacks of an executor run in slices of about ``timeout`` seconds, so that a loop around
    ``run()`` can look at its stop condition between them.

    The events executor runs a slice in its own loop, ``spin_until_future_complete`` on a future
    that never completes: no return to Python for each callback (taking a message costs 65 us
    of CPU against 81 us with a ``spin_once`` per callback, medians of ``bench/state_intake.py``).
    rclpy's Python executors take one callback per ``spin_once``: their
    ``spin_until_future_complete`` leaves a done callback on the future at every call.
    ``spin()`` itself is not used: the events executor of some rclpy releases neither runs
    callbacks nor returns on shutdown from it.
    """

    def __init__(self, executor, timeout: float):
        self.executor = executor
        self.timeout = timeout
        self._never = None if isinstance(executor, Executor) else Future()

    def run(self) -> None:
        if self._never is None:
            self.executor.spin_once(timeout_sec=self.timeout)
        else:
            self.executor.spin_until_future_complete(self._never, timeout_sec=self.timeout)


def spin(executor, context=None, stop: ShutdownRequest | None = None) -> None:
    """Spin until the context shuts down or ``stop`` is requested (seen within 0.1 s)."""
    def ok() -> bool:
        return rclpy.ok(context=context) and not (stop is not None and stop.requested)

    slices = SpinSlices(executor, 0.1)
    while ok():
        try:
            slices.run()
        except Exception:  # noqa: BLE001
            # A signal can shut the context down while a callback is being dispatched; the
            # events executor then raises from inside its dispatch (seen: "Unable to convert
            # call argument"). That is a shutdown, not a failure; anything else propagates.
            if ok():
                raise
            return


def warn_unknown_parameters(node) -> list:
    """Log each parameter given to ``node`` (``-p``, a parameter file) that it does not have
    (ROS ignores them without a word: a typo'd name ran the node on the default), with the
    nearest name it has; returns them. A warning, not an error: one parameter file may serve
    several nodes (``/**``)."""
    import difflib

    given = getattr(node, "_parameter_overrides", {})  # rclpy keeps them on the node
    have = set(node._parameters)
    unknown = sorted(n for n in given if n not in have and not n.startswith("qos_overrides."))
    for name in unknown:
        near = difflib.get_close_matches(name, sorted(have), n=1)
        node.get_logger().warning(
            f"parameter {name!r} given, but this node has no such parameter: ignored"
            + (f" (did you mean {near[0]!r}?)" if near else " (see --help)"))
    return unknown


def init_ros(name: str, argv, **kwargs) -> bool:
    """``rclpy.init`` with the command line; False after one line saying what rcl refused in
    it (a parameter file missing or not YAML, a ``-p`` rule it cannot parse, a trailing
    ``-p``), with rcl's own source locations left out."""
    try:
        rclpy.init(args=argv, **kwargs)
    except Exception as exc:  # noqa: BLE001 - rcl's argument errors (RCLError and kin)
        print(f"[{name}] fatal: the ROS arguments were refused: {rcl_message(exc)}",
              file=sys.stderr, flush=True)
        return False
    return True


def rcl_message(exc: Exception) -> str:
    """An rcl error as one line: without rcl's source locations (``, at /.../x.c:12``), and
    saying which arguments rcl did not know (``UnknownROSArgsError`` holds only their list)."""
    text = " ".join(re.sub(r",? at \S+\.c:\d+", "", str(exc)).split())
    if type(exc).__name__ == "UnknownROSArgsError":
        return f"unknown ROS arguments {text}"
    return text


def run(node_cls, args=None, executor=os.environ.get("ROBOT_IMITATION_EXECUTOR", "events"),
        name: str | None = None) -> int:
    """Entry point body: init, spin until SIGINT/SIGTERM/SIGHUP, then shut the node down
    cleanly.

    Signals are handled by ``ShutdownRequest``: the node's ``close()`` always runs to its end,
    however many signals arrive.

    ``node_cls`` may be a tuple of node classes: the nodes of one process (``container``),
    made in order on one executor, and closed in the reverse order; ``name``: the process's
    name in its messages (default: the node's).
    """
    from rclpy.signals import SignalHandlerOptions

    classes = tuple(node_cls) if isinstance(node_cls, (tuple, list)) else (node_cls,)
    argv = list(args if args is not None else sys.argv)
    if help_requested(argv):
        print("\n\n".join(parameter_help(cls) for cls in classes))
        return 0
    name = name or getattr(classes[0], "NODE_NAME", classes[0].__name__)
    stop = ShutdownRequest(name)
    stop.install()
    if not init_ros(name, argv, signal_handler_options=SignalHandlerOptions.NO):
        return 1
    nodes = []
    code = 0
    try:
        for cls in classes:
            nodes.append(cls())
        for node in nodes:
            warn_unknown_parameters(node)
            if hasattr(node, "stop_requested"):
                stop.on_request.append(node.stop_requested)
        # `executor`: a kind ("events", "single"), or a function of the node returning one.
        exe = make_executor(executor(nodes[0]) if callable(executor) else executor)
        for node in nodes:
            exe.add_node(node)
        spin(exe, stop=stop)
    except ExternalShutdownException:
        pass
    except Exception as exc:  # noqa: BLE001 - report start-up errors clearly, then exit non-zero
        text = rcl_message(exc)
        if nodes and len(nodes) == len(classes):  # (every node made: said by the last one)
            nodes[-1].get_logger().fatal(f"{type(exc).__name__}: {text}")
        else:  # a node being made failed: said by its name
            failed = getattr(classes[len(nodes)], "NODE_NAME", classes[len(nodes)].__name__)
            print(f"[{failed}] fatal: {type(exc).__name__}: {text}", file=sys.stderr,
                  flush=True)
        code = 1
    finally:
        for node in reversed(nodes):
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
        # the node is closed and the process about to exit: a signal now must not kill it
        # half way through the interpreter's exit (which restores the default handlers)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
    return code


class TorchThreads:
    """The CPU threads of a node's runs: ``torch.set_num_threads`` holds for the whole process
    (later threads included), so a run asking for 0 (torch's default) got what the run before
    set; here it gets the default read before any run set one."""

    def __init__(self):
        self.default: int | None = None

    def set(self, requested: int) -> int:
        """Set ``requested`` threads (0: torch's default); returns the number in force."""
        import torch

        if self.default is None:
            self.default = torch.get_num_threads()
        torch.set_num_threads(requested or self.default)
        return torch.get_num_threads()
