"""Policy node: runs a trained checkpoint on the robot's state topics (a lifecycle node).

Lifecycle (``lifecycle_msgs``, ``~/change_state``): configure loads and validates the checkpoint
against the runtime spec and picks the inference backend; activate starts commanding;
deactivate stops; cleanup drops the model. With ``autostart`` (the default) the node configures
and activates itself.

Subscribes to the spec's observation topics (robot state QoS), assembles the observation with
``ObservationAssembler`` (the dataset builder's ``Spec.extract``) and publishes the command on
the spec's action topics (``std_msgs/Float64MultiArray``, command QoS; each command names the
state it answers in its layout, ``pairing``, so that a lockstep bridge pairs it exactly):
  trigger=state  answer every new state once (all parts stamped alike): lockstep simulation, or
                 a robot driver that publishes one state per control cycle. Once an episode
                 status has been heard (the bridge publishes one with each state), a state is
                 answered after the status of its stamp, so a new episode resets the
                 controller before its first state is answered, and a state older than the
                 newest status (one of a finished episode) is not answered;
  trigger=timer  at the control rate (node clock: ``use_sim_time`` paces it by /clock), from
                 the newest state; once statuses come with the states (one stamped like a
                 state), a tick acts only on a state whose own status is in, so that a new
                 episode resets the controller first (a tick between the first state of an
                 episode and its status used to filter the command from the old episode's
                 pose); a tick without one gives no command (counted, ``status_waits``; said
                 when it lasts longer than max_age, at least 1 s).
Safety: every command the node publishes, safe ones included, passes one filter: the action
limits the checkpoint carries (the robot it was trained for: joint limits, gripper range, largest
change per tick), replaced in part or whole by ``robot``/``action_lower``/``action_upper``/
``max_delta``; a checkpoint without limits is refused unless ``allow_unlimited`` (logged). A state
older than ``max_age_periods`` control periods gives the safe command (``hold``: repeat the last
command; ``zero``: toward zeros, no faster than the largest change per tick) and a diagnostics
error (trigger=state: also one topic of the state gone silent while the others go on, which
keeps every state from completing; the error names it; a watchdog pushed back by each state
answered checks once none was for half of max_age, then each control period); NaN/inf in an
input or an output publishes nothing; clamping is counted and logged. A state topic that never
sent anything (nothing to answer, no command) is named in /diagnostics with why, from the graph
(no publisher, another type, incompatible QoS): a warning, an error after ``first_state_timeout``.

Chunks (``chunk_mode``; ``auto``, the default, is the policy family's own: ``mlp`` the first
action of every prediction, ``act`` and ``diffusion`` half of each chunk with the next one
computed a tick ahead): with ``chunk_prefetch`` L >= 1 the next chunk is computed on a worker
thread, from the state L ticks before the current chunk runs out, so that inference longer than
a tick does not hold up the tick. A chunk not ready in time is waited for (``late_chunk: wait``,
the default: commands are the same however long inference takes, as lockstep simulation needs);
a real-time robot sets ``late_chunk: hold``: the tick gives the safe command, through the same
filter, and the chunk is used when it comes, from the action for that tick on. A chunk's actions
are one a control period: with ``trigger: state`` the periods come from the states' stamps, so a
driver faster than the control rate gets each period's chunk action for all of that period's
states (through the filter), no chunk computed for them (``same_period_ticks``, said once).

Cameras: each frame is run through the policy's camera encoder once (the backends run the
encoders apart from the head), and the ticks in between run the head only. ``camera_encoding:
inline`` (default) encodes a new frame in the tick that first sees it: every command comes from
its own frame, exactly; ``ahead`` encodes it on a thread of its own, the ticks using the newest
frame encoded until then, so that a control rate far above the camera's never waits for an
encoder (/diagnostics: frames_encoded, frame_encoding_p50/p99, previous_frame_ticks). That
thread runs at ``camera_encoder_priority`` (idle: whatever wakes preempts it), and a frame still
in encoding ``camera_max_lag`` seconds after it came is given up on: the newest frame is
encoded on the tick, and so are the next ones until the encoder is done (late_frames).
``between`` uses the frames as ``ahead`` does but encodes them on the control thread: the
encoder cut into stages of about a quarter of a millisecond, run after a tick's command is out,
those that fit in the second quarter of the time until the next tick (the first leaves the
command its way to the robot; past ``camera_max_lag`` the tick finishes the frame itself).
With ``trigger: state`` a state is answered once every part carries its stamp; cameras slower
than the joint states set ``camera_frames: latest`` (each camera's newest frame, whatever its
stamp).

Services: ~/enable (std_srvs/SetBool) stops or resumes commanding without a transition;
~/reload (std_srvs/Trigger) reloads the checkpoint. Hot reload: a new value of the
``checkpoint`` parameter (or, opt-in, a path on ``checkpoint_topic``) is checked at once (a
checkpoint folder trained for the running spec, or the change is refused with the reason), then
loaded in the background and swapped in between ticks; a failed load keeps the running policy,
puts the parameter back and says why (log, /diagnostics).
/diagnostics (1 Hz): latency from observation stamp to publish (p50/p99/max), compute time,
tick overruns, missed ticks, model version, backend, the chunk execution (resolved), inference
time per chunk (p50/p99/max), counters (chunks, waited ticks, ticks without a chunk's action...).
"""
from __future__ import annotations

import threading
import time

from .common import (COMMAND_PUB_QOS, LATCHED_QOS, STATE_QOS, STATUS_QOS, LastAnswer,
                     LogThrottle, MatchedReport, Param, checked_subscription, declare_all,
                     limit_args, limit_parameters, run, state_to_answer, steady_timer, take_state,
                     take_status)

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSCompatibility, qos_check_compatible  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from ..cdr import CommandWriter  # noqa: E402
from ..deploy.backends import KINDS  # noqa: E402
from ..deploy.limits import LimitsError, runtime_limits  # noqa: E402
from ..deploy.runtime import (CAMERA_ENCODINGS, CHUNK_MODES, LATE_CHUNKS,  # noqa: E402
                              ENCODER_PRIORITIES, SAFE_COMMANDS, ActionFilter, PolicyController,
                              TimeWindow, load_policy, make_controller, reload_backend)
from ..learning.checkpoint import CheckpointError, read_metadata, spec_mismatch  # noqa: E402
from ..observation import (CAMERA_FRAMES, ObservationAssembler,  # noqa: E402
                           message_class)
from ..pairing import TimerGate, stamp_of, stamp_order  # noqa: E402
from ..spec import Spec  # noqa: E402

class PolicyNode(LifecycleNode):
    NODE_NAME = "policy_node"
    PARAMETERS = (
        Param("checkpoint", "", "checkpoint directory; a new value at run time is checked (a "
              "checkpoint folder trained for the running spec, or the change is refused) and "
              "hot-reloaded"),
        Param("spec", "", "runtime observation/action spec (config/specs name or path); empty: "
              "the spec stored in the checkpoint", read_only=True),
        Param("trigger", "state", "command on each new state or on a timer", read_only=True,
              choices=("state", "timer")),
        Param("rate", 0.0, "timer rate in Hz; 0: the spec's control rate", read_only=True,
              min_value=0.0, max_value=10000.0),
        Param("backend", "auto", "inference backend; auto measures them on the model and keeps "
              "the fastest", read_only=True, choices=("auto",) + KINDS),
        Param("threads", 1, "CPU threads for inference (PyTorch's setting: also those of the "
              "chunk worker's inference)", read_only=True, min_value=1, max_value=64),
        Param("chunk_mode", "auto", "chunked policies: the policy family's own (auto), the first "
              "action of each prediction, chunks open loop, or a temporal ensemble",
              read_only=True, choices=("auto",) + CHUNK_MODES),
        Param("ensemble_decay", 0.01, "temporal ensemble weight exp(-decay * i), i = 0 oldest",
              read_only=True, min_value=0.0, max_value=10.0),
        Param("chunk_execute", 0, "chunk mode: the actions of each chunk executed (0: the whole "
              "chunk; under auto, the family's)", read_only=True, min_value=0, max_value=10000),
        Param("chunk_prefetch", 0, "chunk mode: ticks of lead: the next chunk is computed on a "
              "worker thread when this many actions are left, and executed from that index on "
              "(0: inside the tick when the chunk runs out; under auto, the family's)",
              read_only=True, min_value=0, max_value=10000),
        Param("late_chunk", "wait", "a prefetched chunk not ready in time: wait for it (the "
              "same commands however long inference takes: lockstep simulation) or hold (the "
              "safe command until it comes: a real-time robot)", read_only=True,
              choices=LATE_CHUNKS),
        Param("camera_frames", "stamp", "trigger state, policies with cameras: a state is "
              "answered once each camera's frame of its stamp is in (stamp: lockstep "
              "simulation, recorded episodes) or with the newest frame of each camera (latest: "
              "cameras slower than the joint states, as on a robot)", read_only=True,
              choices=CAMERA_FRAMES),
        Param("camera_encoding", "inline", "policies with cameras: each frame is encoded once, "
              "in the tick that first sees it (inline: every command from its own frame, "
              "exactly), ahead of the ticks on a thread of its own (ahead: no tick waits for "
              "an encoder; a tick uses the newest frame encoded: a control rate far above the "
              "camera's) or as ahead, on the control thread between the ticks, a stage of the "
              "encoder at a time in the second quarter of the time until the next tick (between: "
              "no other thread competes with the ticks for the cores)", read_only=True,
              choices=CAMERA_ENCODINGS),
        Param("camera_encoder_priority", "idle", "camera_encoding ahead: the CPU priority of "
              "the encoder's thread (idle: Linux SCHED_IDLE, any thread that wakes preempts "
              "it, the control loop's tail latency least disturbed; low: nice 19; normal: the "
              "control loop's)", read_only=True, choices=ENCODER_PRIORITIES),
        Param("camera_max_lag", 0.1, "camera_encoding ahead: once a frame has been in encoding "
              "this many seconds (the encoder starved on a busy machine), the ticks encode the "
              "newest frames themselves until the encoder is done: the features commands come "
              "from are never older than this plus one encoding (between: the tick finishes "
              "that frame's stages); 0: no bound", read_only=True,
              min_value=0.0, max_value=60.0),
        Param("max_age_periods", 3.0, "a state older than this many control periods is stale "
              "(0: no check)", min_value=0.0, max_value=1e6),
        Param("safe_command", "hold", "what a stale state gets: hold (repeat the last command) "
              "or zero (move toward zeros, no faster than the maximum change per tick); both "
              "pass the action limits", choices=SAFE_COMMANDS),
        Param("robot", "", "take the action limits from this robot config (arm joint limits, "
              "gripper 0..1, velocity limits per tick) instead of the checkpoint's; empty: the "
              "limits the checkpoint carries", read_only=True),
        *limit_parameters("the checkpoint's (or robot's)"),
        Param("allow_unlimited", False, "command without any action limit when the checkpoint "
              "carries none (trained before checkpoints stored them) and none are given; logged "
              "as a warning. Without it such a checkpoint is refused", read_only=True),
        Param("checkpoint_topic", "", "std_msgs/String topic whose checkpoint paths hot-reload "
              "the policy, e.g. the trainer's /trainer/checkpoint; empty (default): none. Any "
              "node that can publish on this ROS graph can then swap the running policy (each "
              "checkpoint is still checked against the running spec): use it on a graph you "
              "trust, or with SROS 2 access control", read_only=True),
        Param("episode_topic", "/episode/status", "episode status (a new episode drops chunks "
              "in flight; empty: none)", read_only=True),
        Param("autostart", True, "configure and activate at start", read_only=True),
        Param("diagnostics_period", 1.0, "seconds between /diagnostics messages",
              read_only=True, min_value=0.05, max_value=60.0),
        Param("first_state_timeout", 5.0, "seconds after activation (or enable) that a topic "
              "of the state may send nothing before it is an error: /diagnostics turns from "
              "WARN to ERROR and the log names each such topic and why it is silent (no "
              "publisher, a publisher of another type or with incompatible QoS)",
              min_value=0.0, max_value=1e6),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        self.p = declare_all(self, self.PARAMETERS)
        self._by_state = self.p["trigger"] == "state"   # (read-only)
        # the node's clock read without building an rclpy Time each tick (sim time included)
        self._clock_now = self.get_clock().handle.get_now
        self.controller: PolicyController | None = None
        self.active = False
        self.enabled = True
        self.lock = threading.Lock()
        self.latency = TimeWindow()
        self.compute = TimeWindow()
        self.missed_ticks = 0
        self.overruns = 0
        self.reloads = 0
        self.reload_failures = 0
        self.reload_error = ""
        self.loaded_path = ""      # newest checkpoint loaded (it runs from the next tick on)
        # newest safety event since the last diagnostics message (_tick: its parts, not its line)
        self.problem: tuple | None = None
        # the log lines that ticks in a row may repeat, each at most every so many seconds
        self._logs = {"late": LogThrottle(5.0), "problem": LogThrottle(2.0),
                      "clamped": LogThrottle(5.0), "status": LogThrottle(5.0),
                      "jumps": LogThrottle(5.0)}
        self._jumps_logged = 0
        self._reload_request = None
        self._reload_event = threading.Event()
        self._last_tick_wall = None
        self._episode = None
        self._status_stamp = None   # ns of the newest episode status (None: none heard)
        self._timer_gate = TimerGate()  # trigger timer: a tick waits for its state's status
        self._pending = None        # a state waiting for the episode status of its stamp
        self._silent = None         # watchdog tick: (key, stamp) of the part holding states back
        self._watchdog = None       # trigger=state: the timer that watches for stale states
        self._watch_fast = False    # the watchdog at the control period (no state answered)
        self._status_sub = None
        self._ents = []
        self._state_subs = {}       # topic -> its subscription (why a topic sends nothing)
        self._since = time.monotonic()  # activation or enable: how long a topic sent nothing
        self._late_told = 0   # the controller's late_frames at the last diagnostics
        self._same_period_told = False  # states faster than the control rate were said
        self._between = False  # camera_encoding between (set at configure)
        self.last = LastAnswer()
        # validate in on_set (a bad checkpoint is refused with its reason), act in post_set
        self.add_on_set_parameters_callback(self._on_set_params)
        self.add_post_set_parameters_callback(self._after_set_params)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pubs = []  # the command publishers (made at configure)
        MatchedReport(self, lambda: self.pubs, self.pub_diag)  # what a recorder waits for
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/reload", self._on_reload)
        # wall-clock paced: diagnostics keep coming while simulated time stands still
        steady_timer(self, self.p["diagnostics_period"], self._publish_diagnostics)
        self._worker = threading.Thread(target=self._reload_worker, daemon=True)
        self._worker.start()
        if self.p["autostart"]:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()
            else:
                raise RuntimeError("configure failed (see the log above)")

    # ================================================================== lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - CheckpointError, SpecError, BackendError...
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        import torch

        torch.set_num_threads(self.p["threads"])
        path = self.get_parameter("checkpoint").value
        if not path:
            raise ValueError("no checkpoint: set the `checkpoint` parameter")
        runtime = Spec.load(self.p["spec"]) if self.p["spec"] else None
        loaded = load_policy(path, runtime, self.p["backend"], self.p["threads"])
        self.spec = runtime or loaded.spec
        self.period = 1.0 / (self.p["rate"] or self.spec.control_rate)
        self._between = self.p["camera_encoding"] == "between"
        self._gap, self._last_t0 = self.period, None
        self.controller, limits = make_controller(
            loaded, self.spec, **self._limit_args(), chunk_mode=self.p["chunk_mode"],
            ensemble_decay=self.p["ensemble_decay"], chunk_execute=self.p["chunk_execute"],
            max_age=self.p["max_age_periods"] * self.period,
            safe_command=self.p["safe_command"], prefetch=self.p["chunk_prefetch"],
            late_chunk=self.p["late_chunk"], camera_encoding=self.p["camera_encoding"],
            encoder_priority=self.p["camera_encoder_priority"],
            max_frame_lag=self.p["camera_max_lag"])
        if limits is None:
            self.get_logger().warning("commanding WITHOUT action limits (allow_unlimited): nothing "
                                   "bounds the commands or their change per tick")
        else:
            names = [n for f in self.spec.actions for n in f.names()]
            self.get_logger().info(f"action limits from {limits.describe(names)}")
        self.assembler = ObservationAssembler(self.spec, cameras=self.p["camera_frames"])
        self.pubs = [self.create_lifecycle_publisher(Float64MultiArray, f.topic, COMMAND_PUB_QOS)
                     for f in self.spec.actions]
        # each action's slice of the command vector, serialized for its publisher
        self._commands = CommandWriter((a, b) for _, a, b in self.controller.splits)
        self.last = LastAnswer()  # sent again when the bridge republishes its state
        for topic, mtype in self.assembler.topics.items():
            # raw: the spec's fields read straight from the CDR bytes (observation.on_raw)
            self._state_subs[topic] = self.create_subscription(
                message_class(mtype), topic, lambda msg, t=topic: self._on_state(t, msg),
                STATE_QOS, raw=True)
            self._ents.append(self._state_subs[topic])
        if self.p["checkpoint_topic"]:
            self._ents.append(checked_subscription(self, String, self.p["checkpoint_topic"],
                                                   self._on_checkpoint_topic, LATCHED_QOS))
        if self.p["episode_topic"]:
            # raw: the stamp and the episode read from the CDR bytes (one status per state)
            self._status_sub = self.create_subscription(
                message_class("diagnostic_msgs/msg/DiagnosticArray"), self.p["episode_topic"],
                self._on_episode, STATUS_QOS, raw=True)
            self._ents.append(self._status_sub)
        if self.p["trigger"] == "timer":  # the timer drives the commands
            self._ents.append(self.create_timer(self.period, self._on_timer))
        elif self.controller.max_age > 0:
            # a watchdog for states gone stale, pushed back by each state answered
            # (Timer.reset): it fires only once no state was answered for half of max_age, and
            # from then on each control period until one is (as a timer of the control period
            # would, which woke the process between every two states at 1 kHz)
            self._watch_ns = (round(max(self.period, self.controller.max_age / 2) * 1e9),
                              round(self.period * 1e9))
            self._watchdog = self.create_timer(self._watch_ns[0] * 1e-9, self._on_timer)
            self._watch_fast = False
            self._ents.append(self._watchdog)
        self.get_logger().info(
            f"policy {loaded.path} (type {loaded.policy_type}, version {loaded.version}, "
            f"spec '{self.spec.name}', chunk {loaded.chunk}; {self.controller.describe()}) on "
            f"backend {loaded.backend.kind} [{self._backend_table(loaded)}], trigger "
            f"{self.p['trigger']} at "
            f"{1 / self.period:g} Hz, loaded in {loaded.load_seconds:.2f} s")

    def _limit_args(self) -> dict:
        """The parameters that replace a checkpoint's action limits (``runtime_limits``)."""
        return {"robot": self.p["robot"], **limit_args(self.p)}

    def _limits(self, spec, stored):
        """The action limits of a checkpoint trained for ``spec`` carrying ``stored`` (its
        ``action_limits``): those, or what the parameters give (``runtime_limits``); raises
        ``LimitsError`` when there are none and running without them was not asked for."""
        return runtime_limits(spec, stored, **self._limit_args())

    @staticmethod
    def _backend_table(loaded) -> str:
        return ", ".join(f"{r['backend']} {r['median_us']:.0f} us" if "median_us" in r
                         else f"{r['backend']}: {r.get('error', 'as configured')}"
                         for r in loaded.backends)

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.controller.reset()
        self._last_tick_wall = None
        self._since = time.monotonic()
        self.active = True
        self.get_logger().info("active: commanding")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.active = False
        self.get_logger().info("inactive: no commands")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.active = False
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self.active = False
        for ent in self._ents:
            if hasattr(ent, "cancel"):
                ent.cancel()
                self.destroy_timer(ent)
            else:
                self.destroy_subscription(ent)
        self._ents = []
        self._watchdog = None
        self._state_subs = {}
        self._status_sub = None
        for pub in getattr(self, "pubs", []):
            self.destroy_lifecycle_publisher(pub)
        self.pubs = []
        self.last = LastAnswer()
        if self.controller is not None:
            self.controller.close()
        self.controller = None

    # ================================================================== control
    def _on_state(self, topic: str, msg) -> None:
        if take_state(self, self.assembler, topic, msg) and self.p["trigger"] == "state":
            ready = state_to_answer(self.assembler, self.pubs)
            if ready is not None:
                if self._status_stamp is None and self._status_sub is not None and \
                        self._status_sub.get_publisher_count():
                    # an episode status is published but none heard yet (discovery still
                    # matching): the state waits for it, so that the controller is reset for
                    # a new episode before it answers that episode's first state
                    self._pending = ready
                    return
                if self._status_stamp is not None:
                    order = stamp_order(stamp_of(ready[0]), self._status_stamp)
                    if order > 0:
                        self._pending = ready  # answered once its episode status is in
                        return
                    if order < 0:
                        return  # a newer status is in: this state's episode has moved on
                self._pending = None
                self._tick(*ready)
            elif self.active and self.enabled:
                self.last.again(self, self.assembler.repeated())

    def _on_timer(self) -> None:
        if self.controller is None:
            return
        latest = self.assembler.latest()
        if self.p["trigger"] == "timer":
            now = time.monotonic()
            if self._last_tick_wall is not None and self.active:
                gap = (now - self._last_tick_wall) / self.period
                if gap > 1.5:
                    self.missed_ticks += int(round(gap)) - 1
            self._last_tick_wall = now
            if latest is not None:
                # once statuses come with the states, only a state whose own status is in
                order = self._timer_gate.order(stamp_of(latest[0]), self._status_stamp, now)
                if order:
                    gate = self._timer_gate
                    if now - gate.since > max(self.controller.max_age, 1.0) and \
                            self._logs["status"].due():  # (a status publisher that stopped)
                        self.get_logger().warning(gate.describe(latest[0], order, now))
                    return
                self._tick(*latest)
        elif latest is not None and self.controller.max_age > 0:
            # trigger=state: no complete state for too long gives the safe command, whether
            # every topic went silent or one (whose part then holds every state back)
            if not self._watch_fast and self._watchdog is not None:  # checked each control
                # period from now until a state is answered
                self._watch_fast = True
                self._watchdog.timer_period_ns = self._watch_ns[1]
                self._watchdog.reset()
            stamp, key = self.assembler.oldest_part()
            age = self._clock_now().nanoseconds * 1e-9 - stamp
            if age > self.controller.max_age:
                self._silent = (key, stamp)
                self._tick(latest[0], latest[1])
                self._silent = None

    def _tick(self, stamp: float, obs: dict) -> None:
        if self._watchdog is not None and self._silent is None:  # a state answered
            if self._watch_fast:
                self._watch_fast = False
                self._watchdog.timer_period_ns = self._watch_ns[0]
            self._watchdog.reset()
        if not (self.active and self.enabled) or self.controller is None:
            return
        t0 = time.perf_counter()
        now = self._clock_now().nanoseconds * 1e-9
        # trigger state: the state's time, so that states faster than the control rate share
        # one period's change (a velocity bound); on the timer each tick is a period
        result = self.controller.tick(obs, now - stamp, stamp if self._by_state else None)
        # the log lines of ticks that may come one after another are decided by a clock read
        # (LogThrottle) and built only when due: rclpy's throttled logging costs more than a tick
        if result.reason == "late":  # late_chunk hold: counted (no_action_ticks), not an error
            if self._logs["late"].due():
                self.get_logger().warning(
                    f"the next chunk is not computed yet: safe command "
                    f"({self.p['safe_command']}; {self.controller.counters.no_action_ticks} "
                    "such ticks in all)")
        elif result.reason != "ok":
            # the newest safety event, for /diagnostics: its line is made when reported
            self.problem = (result.reason, result.error, now - stamp, self._silent_part(now))
            if self._logs["problem"].due():
                self.get_logger().error(self._problem_line(self.problem))
        if result.clamped and self._logs["clamped"].due():
            self.get_logger().warning(
                f"command clamped to the action limits ({result.clamped} values this tick, "
                f"{self.controller.counters.clamped_ticks} clamped ticks in all)")
            jumps = self.controller.filter.jumps
            if jumps > self._jumps_logged:  # (only ever with a clamp)
                self._jumps_logged = jumps
                self.get_logger().error(
                    f"a command moved more than max_delta in a tick to stay within the action "
                    f"limits ({jumps} ticks in all): the robot (or the last command) is outside "
                    f"them ({self.controller.filter.describe_outside()}); narrower limits than "
                    "where it stands, or a checkpoint of narrower ones swapped in")
        if result.action is not None:
            # serialized here (the message answer() fills, as CDR bytes): a raw publish
            for pub, raw in zip(self.pubs, self._commands.write(result.action, stamp_of(stamp))):
                self.last.publish(pub, raw, stamp)
            done = self._clock_now().nanoseconds * 1e-9
            self.latency.add(done - stamp)
        spent = time.perf_counter() - t0
        self.compute.add(spent)
        if spent > self.period:
            self.overruns += 1
        if self._between:
            # camera_encoding between: encoder stages in the second quarter of the time until
            # the next tick is due (the ticks' mean spacing, at most the control period): none
            # runs when the next state comes, nor while this tick's command is on its way
            if self._last_t0 is not None:
                self._gap += 0.05 * (min(t0 - self._last_t0, self.period) - self._gap)
            self._last_t0 = t0
            self.controller.between(t0 + 0.5 * self._gap, start=t0 + 0.25 * self._gap)

    def _problem_line(self, problem: tuple) -> str:
        """The line that says why a tick gave no command or the safe one, from what ``_tick``
        kept of it: (reason, error, the state's age, the silent topic's part)."""
        reason, error, age, silent = problem
        safe = self.p["safe_command"]
        if reason == "stale":
            return f"state {age:.3f} s old{silent}: safe command ({safe})"
        if reason == "inference_error":
            return f"inference failed ({error}): safe command ({safe})"
        return {"nonfinite_input": "NaN/inf in the observation: no command",
                "nonfinite_output": "NaN/inf in the policy output: no command"}[reason]

    def _silent_part(self, now: float) -> str:
        """Which topic holds the states back, when the watchdog found one older than the
        others (for the stale message), else nothing."""
        if self._silent is None:
            return ""
        key, stamp = self._silent
        if self.assembler.newest_stamp() <= stamp:
            return ""  # every topic as old: the states stopped
        topic = next((f.topic for f in self.assembler.fields if f.key == key), key)
        return f" ({topic}: nothing new for {now - stamp:.3f} s, the other topics go on)"

    def _on_episode(self, raw: bytes) -> None:
        status = take_status(self, self.p["episode_topic"], raw)
        if status is None:  # malformed: dropped
            return
        stamp, episode = status
        pending = self._pending
        if pending is not None and stamp_order(stamp_of(pending[0]), stamp) < 0:
            # a state whose own status never came (a publisher without one per state): it
            # comes before this status's episode change
            self._pending = None
            self._tick(*pending)
            pending = None
        if episode is not None and episode != self._episode:
            self._episode = episode
            if self.controller is not None:
                self.controller.reset()
        self._status_stamp = stamp
        if pending is not None and stamp_order(stamp_of(pending[0]), stamp) == 0:
            self._pending = None
            self._tick(*pending)

    # ================================================================== services, reload
    def _on_enable(self, request, response):
        if request.data and not self.enabled:
            self._since = time.monotonic()
        self.enabled = bool(request.data)
        if self.enabled and self.controller is not None:
            self.controller.reset()
        response.success = True
        response.message = "enabled" if self.enabled else "disabled"
        return response

    def _on_reload(self, request, response):
        path = self.get_parameter("checkpoint").value
        if self.controller is None:
            response.success, response.message = False, "not configured"
            return response
        self._request_reload(path)
        response.success, response.message = True, f"loading {path}"
        return response

    def _on_checkpoint_topic(self, msg) -> None:
        path = msg.data
        current = self.controller.policy.path if self.controller else None
        if path and path != current:
            result = self.set_parameters([Parameter("checkpoint", value=path)])[0]
            if not result.successful:
                self.reload_failures += 1
                self.reload_error = result.reason
                self.get_logger().error(f"checkpoint from {self.p['checkpoint_topic']} "
                                        f"refused: {result.reason}")

    def checkpoint_problem(self, path: str) -> str | None:
        """Why ``path`` cannot be the checkpoint (cheap: its files and spec, not its weights),
        or None. The full load happens in the background after the change is accepted."""
        try:
            meta = read_metadata(path)
            trained = Spec.from_dict(meta["spec"], where=f"{path} spec")
        except (CheckpointError, ValueError, KeyError) as exc:
            return f"checkpoint {path!r} refused: {exc}"
        if self.controller is not None:
            problems = spec_mismatch(trained, self.controller.spec)
            if problems:
                return (f"checkpoint {path!r} refused: trained for spec '{trained.name}', which "
                        f"does not match the running spec '{self.controller.spec.name}': "
                        + "; ".join(problems))
        if not self.p["robot"]:  # (a robot's limits replace the checkpoint's: nothing to check)
            try:  # the limits this checkpoint would run under: the same rule as configure's
                self._limits(trained, meta.get("action_limits"))
            except LimitsError as exc:
                return f"checkpoint {path!r} refused: {exc}"
        return None

    def _on_set_params(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "checkpoint" and not p.value and self.controller is not None:
                return SetParametersResult(successful=False, reason=(
                    f"checkpoint '' refused: the running policy "
                    f"({self.controller.policy.path}) stays until another checkpoint is given"))
            if p.name == "checkpoint" and p.value:
                problem = self.checkpoint_problem(p.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _after_set_params(self, params) -> None:
        for p in params:
            if p.name == "checkpoint" and p.value and self.controller is not None \
                    and p.value != self.controller.policy.path:
                self._request_reload(p.value)

    def _request_reload(self, path: str) -> None:
        with self.lock:
            self._reload_request = path
        self._reload_event.set()

    def _reload_worker(self) -> None:
        while True:
            self._reload_event.wait()
            self._reload_event.clear()
            with self.lock:
                path, self._reload_request = self._reload_request, None
            controller = self.controller
            if path is None or controller is None:
                continue
            backend, again = reload_backend(self.p["backend"], controller.policy.backend.kind)
            try:
                try:
                    loaded = load_policy(path, controller.spec, backend, self.p["threads"],
                                         apart=True)
                except RuntimeError:
                    if not again:
                        raise
                    # the backend chosen for the old model cannot run the new one: choose again
                    loaded = load_policy(path, controller.spec, "auto", self.p["threads"],
                                         apart=True)
                limits = self._limits(controller.spec, loaded.meta.get("action_limits"))
                # checked here (a prefetch its chunk cannot run: ValueError), swapped at a tick
                controller.offer(loaded, ActionFilter.from_limits(limits,
                                                                  controller.spec.action_dim))
            except (ValueError, RuntimeError, OSError) as exc:
                self.reload_failures += 1
                self.reload_error = str(exc)
                self.get_logger().error(f"reload of {path} failed, the running policy "
                                        f"({controller.policy.path}) stays: {exc}")
                # the parameter names the checkpoint that runs
                self.set_parameters([Parameter("checkpoint", value=controller.policy.path)])
                continue
            self.loaded_path = path
            self.reloads += 1
            self.reload_error = ""
            self.get_logger().info(f"loaded {path} (version {loaded.version}, backend "
                                   f"{loaded.backend.kind}"
                                   + f" {loaded.backend.note}" * bool(loaded.backend.note)
                                   + f", {loaded.load_seconds:.2f} s, action "
                                   f"limits from {limits.source if limits else 'nowhere'}): "
                                   "takes over at the next tick")

    # ================================================================== diagnostics
    def _waiting(self) -> tuple | None:
        """(level, message, topics) while a topic of the state has sent nothing since the node
        was configured (no state can be answered: no command), else None. An error, logged,
        once that has lasted ``first_state_timeout`` since activation or enable; a warning
        before (nodes starting in any order)."""
        missing = self.assembler.missing_topics()
        if not missing:
            return None
        waited = time.monotonic() - self._since
        message = (f"no command: nothing received on "
                   f"{'; '.join(f'{t} ({self._why_silent(t)})' for t in missing)} "
                   f"for {waited:.1f} s")
        if waited < self.get_parameter("first_state_timeout").value:
            return DiagnosticStatus.WARN, message, missing
        self.get_logger().error(message, throttle_duration_sec=10.0)
        return DiagnosticStatus.ERROR, message, missing

    def _why_silent(self, topic: str) -> str:
        """Why ``topic`` may have sent nothing, from the ROS graph."""
        sub = self._state_subs[topic]
        matched = sub.get_publisher_count()
        if matched:
            return f"{matched} publisher{'s' * (matched > 1)} matched, no message yet"
        expected = self.assembler.topics[topic]
        reasons = []
        for info in self.get_publishers_info_by_topic(topic):
            who = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
            if info.topic_type != expected:
                reasons.append(f"{who} publishes {info.topic_type}, the spec takes {expected}")
                continue
            compatible, why = qos_check_compatible(info.qos_profile, sub.qos_profile)
            # rcl's reason reads "ERROR: Best effort publisher and reliable subscription;"
            why = why.removeprefix("ERROR:").strip().rstrip(";")
            reasons.append(f"{who} offers incompatible QoS ({why[:1].lower() + why[1:]})"
                           if compatible == QoSCompatibility.ERROR
                           else f"{who} not matched yet")
        return "; ".join(reasons) or "no publisher"

    def _publish_diagnostics(self) -> None:
        c = self.controller
        values = {"state": ("active" if self.active else "inactive") if c else "unconfigured",
                  "enabled": str(self.enabled).lower(), "missed_ticks": self.missed_ticks,
                  "overruns": self.overruns, "reloads": self.reloads,
                  "reload_failures": self.reload_failures, "answers_resent": self.last.resent,
                  "status_waits": self._timer_gate.waits}
        if self._episode is not None:
            values["episode"] = self._episode  # the newest episode status heard
        if c is not None:
            k = c.counters
            values.update({"checkpoint": c.policy.path,
                           "checkpoint_loaded": self.loaded_path or c.policy.path,
                           "model_version": c.policy.version,
                           "backend": c.policy.backend.kind, "ticks": k.ticks,
                           "commands": k.commands, "inferences": k.inferences,
                           "stale": k.stale, "nonfinite_inputs": k.nonfinite_inputs,
                           "nonfinite_outputs": k.nonfinite_outputs,
                           "clamped_ticks": k.clamped_ticks, "swaps": k.swaps,
                           "limit_jumps": c.filter.jumps,
                           "chunk_mode": c.settings["chunk_mode"]
                           + " (auto)" * c.settings["auto"],
                           "chunk_execute": c.settings["chunk_execute"],
                           "chunk_prefetch": c.settings["prefetch"],
                           "late_chunk": c.settings["late_chunk"], "chunks": k.chunks,
                           "discarded_chunks": k.discarded_chunks,
                           "waited_ticks": k.waited_ticks, "no_action_ticks": k.no_action_ticks,
                           "same_period_ticks": k.same_period_ticks,
                           "inference_errors": k.inference_errors})
            if k.same_period_ticks and not self._same_period_told:
                self._same_period_told = True
                self.get_logger().info(
                    f"states come faster than the control rate ({c.spec.control_rate:g} Hz): "
                    f"{c.settings['chunk_mode']}: each control period's chunk action answers "
                    "all of its states (through the filter), chunks are computed as at the "
                    "control rate (same_period_ticks in /diagnostics)")
            for key, v in c.timing().items():
                values[f"chunk_inference_{key}"] = f"{v:.3f}"
            if c.policy.backend.images:
                values.update({"camera_encoding": c.camera_encoding
                               + " (whole)" * (not c.policy.backend.split),
                               "frames_encoded": k.frames_encoded,
                               "previous_frame_ticks": k.previous_frame_ticks})
                if c.camera_encoding != "inline" and c.policy.backend.split:
                    values["late_frames"] = k.late_frames
                if c.camera_encoding == "ahead" and c.policy.backend.split:
                    values["camera_encoder_priority"] = c.encoder_priority
                for key, v in c.encode_timing().items():
                    values[f"frame_encoding_{key}"] = f"{v:.3f}"
        for name, window in (("latency", self.latency), ("compute", self.compute)):
            for key, v in window.summary().items():
                values[f"{name}_{key}"] = f"{v:.3f}"
        if self.reload_error:
            values["reload_error"] = self.reload_error
        problem = self._problem_line(self.problem) if self.problem else ""
        self.problem = None
        late = 0   # camera frames the encoder's thread gave up since the last report
        if c is not None:
            n = c.counters.late_frames
            late, self._late_told = max(0, n - self._late_told), n
        waiting = self._waiting() if c and self.active and self.enabled else None
        if waiting:
            values["waiting_for"] = " ".join(waiting[2])
        if problem:
            level, message = DiagnosticStatus.ERROR, problem
        elif waiting:
            level, message = waiting[:2]
        elif self.reload_error:
            level, message = DiagnosticStatus.WARN, f"reload failed: {self.reload_error}"
        elif late:
            who = "the encoder's thread" if c.camera_encoding == "ahead" else \
                "the time between the ticks"
            level, message = DiagnosticStatus.WARN, (
                f"{late} camera frame(s) encoded on the tick since the last report: "
                f"{who} had one in encoding for over camera_max_lag "
                f"({c.max_frame_lag:g} s; a machine too busy for it, or an encoder slower "
                f"than that)")
            self.get_logger().warning(message, throttle_duration_sec=10.0)
        elif not (c and self.active and self.enabled):
            level, message = DiagnosticStatus.WARN, "not commanding (" + (
                "disabled" if c and self.active else values["state"]) + ")"
        else:
            level, message = DiagnosticStatus.OK, "commanding"
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [DiagnosticStatus(level=level, name=f"{self.get_name()}: control",
                                       message=message, hardware_id="policy",
                                       values=[KeyValue(key=k, value=str(v))
                                               for k, v in values.items()])]
        self.pub_diag.publish(msg)


def main(args=None) -> int:
    return run(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
