"""Command mux: forwards one of several command sources to the robot's command topics.

Like twist_mux, for the controllers' ``std_msgs/Float64MultiArray`` command topics. Each source
publishes under its own prefix (``/<source>/arm_controller/commands``, ... : remap the expert's,
the policy node's or the teleop's outputs there); the mux publishes the chosen source's commands
on the robot's topics (``/arm_controller/commands``, ...) and, for every forwarded command, the
source's name on ``~/source`` (std_msgs/String, published just before the commands), which the
recorder keeps with the episode.

Modes (parameter ``mode``, settable at run time, as are ``beta``, ``sync_timeout`` and
``joy_timeout``): ``expert``, ``policy``, ``mixture`` (the expert with probability ``beta``,
drawn per step or per episode), and ``intervention`` (the policy, except while
``intervention_button`` of ``sensor_msgs/Joy`` is held: then ``intervention_source``). See
``deploy/mux.py``. A Joy with too few buttons to hold ``intervention_button`` is said (once for
each button count). While the button is held and no Joy has come for ``joy_timeout`` s (a
joystick unplugged, its driver gone), the mux says so (a warning every 5 s, ``joy_silent`` in
``/diagnostics``) and the intervention source keeps driving: nothing hands the robot back to the
policy without the person.

``joy_sync: true`` (with sync): the Joy comes from a scripted supervisor that answers every
state with a Joy stamped like the state (``scripted_supervisor``); in intervention mode each
state then also waits for its button state.

Safety: every command the mux publishes passes the one action filter (``deploy.limits``), on by
default: the robot of ``task`` (or ``robot``) bounds each joint and the gripper, and each
value's change per control tick of the task's spec, counted from the last command forwarded
whichever source sent it (a hand-over from the policy to a person, or back, never jumps). After
a new episode, and before the first forward, the change counts from the measured joints (a
simulated robot is put back); an arm command with nothing to count from (no joint state on
``state_topic`` yet, or none that names the joints) is not forwarded (counted,
``no_reference_dropped``, and said once each run of them). Without sync the change allowed is
that of the control ticks since the last forward, on the node's clock (at most one tick): a
source faster than the control rate, or a burst of queued commands, moves the robot no faster
than its velocity limits. With sync, one tick per state (of the states' stamps, which a lockstep
bridge advances one control period a state). A command of the wrong size or with a NaN is not
forwarded. ``action_lower``/``action_upper``/``max_delta`` replace part of the robot's limits;
``allow_unlimited`` with limits that bound nothing is the only way to forward commands as they
come.

``sync: true`` (lockstep simulation): for each new state on ``state_topic`` the mux waits until
every source in ``sync_sources`` answered it (at most ``sync_timeout`` s, then the chosen
source alone), so the expert labels of policy-driven steps are published at the state's
instant. A source outside ``sync_sources`` (a person's teleop) answers a state only with a
command that came after the state: none, and the mux waits as for a source that has not
answered (a held button with a silent teleop forwarded its last command, however old).
``sync: false`` forwards the chosen source's messages as they arrive; a mixture then draws
again every ``1 / rate`` s. Once statuses come with the states (stamped alike), a command
waits while the newest state's status (or that of the state the command names) is not in, and
after a new episode until the episode's first state is in (``deploy.mux.StatusGate``): the
filter then counts from the joints the robot was put back to, whatever order the state, its
status and the commands came in; a command naming a state of an earlier episode is not
forwarded. A wait past ``sync_timeout`` is said (a line every 5 s), naming the state.
"""
from __future__ import annotations

import time

import numpy as np

from .common import (COMMAND_PUB_QOS, COMMAND_QOS, SENSOR_QOS, STATE_QOS, STATUS_QOS,
                     LogThrottle, MatchedReport, Param, checked_subscription, declare_all,
                     limit_args, limit_parameters, run, stamp_ns, steady_timer, take_status)

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState, Joy  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from ..deploy.limits import CommandLimiter, command_limits  # noqa: E402
from ..deploy.mux import MuxCore, StatusGate  # noqa: E402
from ..pairing import layout_stamp  # noqa: E402
from ..sim.tasks import TaskConfig  # noqa: E402
from ..spec import Spec  # noqa: E402


class CommandMux(Node):
    NODE_NAME = "command_mux"
    PARAMETERS = (
        Param("topics", ["/arm_controller/commands", "/gripper_controller/commands"],
              "robot command topics (std_msgs/Float64MultiArray)", read_only=True),
        Param("sources", ["expert", "policy", "human"], "source names: source s publishes on "
              "/s<topic>", read_only=True),
        Param("mode", "expert", "expert | policy | mixture | intervention, or any source name"),
        Param("beta", 1.0, "mixture: probability of the expert", min_value=0.0, max_value=1.0),
        Param("mixture_per", "step", "mixture: draw per step or per episode", read_only=True,
              choices=("step", "episode")),
        Param("seed", 0, "mixture draws", read_only=True, min_value=0, max_value=2**63 - 1),
        Param("sync", False, "lockstep: wait for every sync source's answer to each state",
              read_only=True),
        Param("sync_sources", ["expert", "policy"], "sources that answer every state (sync)",
              read_only=True),
        Param("sync_timeout", 2.0, "sync: seconds to wait for the other sources before "
              "forwarding the chosen one alone; no sync: a wait for a state's episode status "
              "longer than this is said", min_value=0.0, max_value=60.0),
        Param("state_topic", "/joint_states", "the robot's states (sync: each one answered; "
              "no sync: their stamps, and the measured joints the filter counts from at the "
              "start and after a new episode: no arm command goes before one)", read_only=True),
        Param("rate", 20.0, "no sync: mixture draws per second", read_only=True, min_value=0.1,
              max_value=10000.0),
        Param("intervention_source", "human", "who takes over while the button is held",
              read_only=True),
        Param("intervention_button", 10, "sensor_msgs/Joy button to hold for intervention "
              "(10: RIGHTSHOULDER in joy's game_controller_node layout)", read_only=True,
              min_value=0, max_value=127),
        Param("joy_timeout", 0.5, "intervention: seconds without a Joy while the button is "
              "held before the mux warns (the intervention source keeps driving); 0: never",
              min_value=0.0, max_value=60.0),
        Param("joy_sync", False, "sync, intervention mode: also wait for the Joy stamped with "
              "each state's stamp (a scripted supervisor)", read_only=True),
        Param("episode_topic", "/episode/status", "episode status (per episode mixtures draw "
              "again per episode; the action filter counts from the measured joints again)",
              read_only=True),
        Param("task", "push", "task whose robot's limits and spec's control tick the action "
              "filter takes (config/tasks name or path)", read_only=True),
        Param("spec", "", "spec of the commands (config/specs name or path): its actions are "
              "the `topics`; empty: the task's", read_only=True),
        Param("robot", "", "robot config whose limits the action filter takes (arm joint "
              "limits, gripper 0..1, velocity limits per tick); empty: the task's robot",
              read_only=True),
        *limit_parameters("the robot's"),
        Param("allow_unlimited", False, "forward without any action limit, when the limits "
              "given bound nothing; logged as a warning. Without it such limits are refused",
              read_only=True),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        p = declare_all(self, self.PARAMETERS)
        topics, sources, mode, beta = p["topics"], p["sources"], p["mode"], p["beta"]
        sync_sources, state_topic, rate = p["sync_sources"], p["state_topic"], p["rate"]
        episode_topic = p["episode_topic"]
        self.sync = p["sync"]
        self.sync_timeout = p["sync_timeout"]
        self._timeout_logs: dict = {}  # what a forced forward missed -> its LogThrottle
        self.button = p["intervention_button"]
        self.joy_timeout = p["joy_timeout"]
        self._joy_time = None       # monotonic time of the newest Joy
        self._joy_silent = False    # intervening, and no Joy for joy_timeout s
        self._joy_log = LogThrottle(5.0)
        self._short_joys: set = set()  # button counts of Joys too short for the button (said)
        self.core = MuxCore(topics, sources, mode, beta, p["mixture_per"], p["seed"],
                            sync_sources, p["intervention_source"],
                            joy_sync=self.sync and p["joy_sync"])
        # what must be connected before a lockstep run starts: an answer sent before the mux
        # subscription matched is lost, and a source answers each state only once
        self._inputs = ([f"/{s}{t}" for s in sync_sources for t in topics] + [state_topic] +
                        (["joy"] if self.core.joy_sync else [])) if self.sync else []
        self._limiter = self._make_limiter(p, topics)
        self._part = {t: i for i, t in enumerate(topics)}
        self._measured = None   # the newest state (JointState): the filter's reference at reset
        self.refused = 0        # commands not forwarded (wrong size, not finite)
        self.unreferenced = 0   # commands not forwarded: nothing to count their change from
        self._unreferenced_run = False  # the last command of a limited part was one such
        self._unreferenced_log = LogThrottle(5.0)
        self._state_topic = state_topic
        self.pubs = {t: self.create_publisher(Float64MultiArray, t, COMMAND_PUB_QOS)
                     for t in topics}
        self.pub_source = self.create_publisher(String, "~/source", COMMAND_PUB_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # what a recorder waits for before a start (the commands from the first on)
        MatchedReport(self, (*self.pubs.values(), self.pub_source), self.pub_diag)
        for s in sources:
            for t in topics:
                checked_subscription(self, Float64MultiArray, f"/{s}{t}",
                                     lambda msg, s=s, t=t: self._on_command(s, t, msg),
                                     COMMAND_QOS)
        # a person's joystick: sensor data; a scripted supervisor (joy_sync): every Joy counts
        checked_subscription(self, Joy, "joy", self._on_joy,
                             STATE_QOS if self.core.joy_sync else SENSOR_QOS)
        if episode_topic:  # (one status comes with each state: every one is taken)
            # raw: the stamp and the episode read from the CDR bytes
            self.create_subscription(DiagnosticArray, episode_topic, self._on_episode,
                                     STATUS_QOS, raw=True)
        self._episode_topic = episode_topic
        self._episode = None
        self._stamps_seen = None
        self._state_time = None
        self._forward = None  # (state stamp, source, [(topic, message)]) forwarded last
        self.resent = 0
        self.timeouts = 0
        if self.sync:
            checked_subscription(self, JointState, state_topic, self._on_state, STATE_QOS)
            steady_timer(self, 0.05, self._check_timeout)  # measured in wall time
        else:
            self.create_timer(1.0 / rate, self.core.redraw)
            # a command waits for its state's episode status (StatusGate)
            self._gate = StatusGate(needs_state=bool(self._joints))
            self._held_log = LogThrottle(5.0)
            if self._joints or episode_topic:
                # the states' stamps, and the measured joints: the filter's reference after a
                # new episode
                checked_subscription(self, JointState, state_topic, self._on_measured,
                                     STATE_QOS)
            if episode_topic:
                steady_timer(self, 0.05, self._check_held)  # measured in wall time
        # checked in on_set (a bad value refused with its reason), applied in post_set
        self.add_on_set_parameters_callback(self._on_params)
        self.add_post_set_parameters_callback(self._after_params)
        if not self.core.joy_sync:  # (a supervisor's Joy answers each state: waited for)
            steady_timer(self, 0.1, self._check_joy)  # measured in wall time
        if p["intervention_source"] not in sources:  # read-only: intervention mode is refused
            self.get_logger().warning(
                f"intervention_source {p['intervention_source']!r} is not among the sources "
                f"{list(sources)}: mode intervention will be refused")
        steady_timer(self, 1.0, self._publish_diagnostics)
        self.get_logger().info(f"mux over {sources} on {topics}: mode {mode} (beta {beta}), "
                               f"{'sync on ' + state_topic if self.sync else 'no sync'}")

    def _make_limiter(self, p: dict, topics: list) -> CommandLimiter:
        """The action filter over ``topics`` (the spec's action topics, in order)."""
        spec = Spec.load(p["spec"]) if p["spec"] else Spec.for_task(p["task"])
        robot = p["robot"] or TaskConfig.load(p["task"]).robot
        actions = [f.topic for f in spec.actions]
        if list(topics) != actions:
            raise ValueError(f"topics {list(topics)} are not the action topics of spec "
                             f"'{spec.name}' {actions}, whose limits the mux applies: give "
                             "the spec of these commands (spec, task)")
        limits = command_limits(spec, robot, **limit_args(p))
        names = [n for f in spec.actions for n in f.names()]
        if limits is None:
            self.get_logger().warning("forwarding WITHOUT action limits (allow_unlimited): "
                                      "nothing bounds the commands or their change per tick")
        else:
            self.get_logger().info(f"action limits from {limits.describe(names)}, per tick of "
                                   f"{spec.control_rate:g} Hz")
        # the joints a relative action part (the arm) counts from after a reset, by name
        fields = {f.key: f for f in spec.observations}
        self._joints = {f.relative_to: fields[f.relative_to].joints for f in spec.actions
                        if f.relative_to and f.relative_to in fields
                        and fields[f.relative_to].field == "position"
                        and fields[f.relative_to].joints}
        limiter = CommandLimiter(limits, spec)
        # the parts whose change counts from measured joints until their first forward
        self._measurable = [f.relative_to in self._joints for f in spec.actions]
        for i, f in enumerate(spec.actions):
            if limiter.rate_limited(i) and not self._measurable[i]:
                self.get_logger().warning(
                    f"{f.topic}: a change limit, but no measured joint position to count it "
                    "from (the spec's action is not relative to one): its first command, and "
                    "the first of each new episode, is bounded only by its limits")
        return limiter

    def _measured_values(self) -> dict | None:
        """The newest state's measured joints, by observation key (None before any)."""
        msg = self._measured
        if msg is None or not self._joints:
            return None
        at = {n: i for i, n in enumerate(msg.name)}
        out = {}
        for key, joints in self._joints.items():
            if all(j in at and at[j] < len(msg.position) for j in joints):
                out[key] = np.array([msg.position[at[j]] for j in joints])
        return out

    def _on_measured(self, msg: JointState) -> None:
        self._measured = msg
        self._gate.on_state(stamp_ns(msg.header.stamp))
        if self._gate.held:
            self._release()

    def _release(self) -> None:
        """Forward the commands that waited for a status or a state and may go now (still
        from the chosen source)."""
        for topic, source, msg in self._gate.release():
            if self.core.passthrough(source):
                self._pass(source, topic, msg)

    def _check_held(self) -> None:
        gate = self._gate
        if gate.held_since is None or time.monotonic() - gate.held_since <= self.sync_timeout:
            return
        if self._held_log.due():
            waited = time.monotonic() - gate.held_since
            named = [n for _, _, n in gate.held.values() if n is not None]
            state = max([gate.state or 0, *named])
            self.get_logger().warning(
                f"commands wait for the episode status of state {state * 1e-9:.3f} s "
                f"({waited:.1f} s so far; the newest status: {(gate.status or 0) * 1e-9:.3f} s"
                + (f", the episode's first state: {gate.started * 1e-9:.3f} s"
                   if gate.needs_state and gate.started is not None
                   and (gate.state is None or gate.state < gate.started) else "")
                + "): not forwarded before it comes")

    def _limited(self, topic: str, msg, now: float | None = None):
        """``msg`` through the action filter: the message to forward (``msg`` itself when
        nothing changed), or None for one that must not reach the robot. ``now``: its time
        (s), for the change allowed since the last forward (None: one tick)."""
        i = self._part[topic]
        a, b = self._limiter.parts[i]
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (b - a,) or not np.isfinite(values).all():
            self.refused += 1
            self.get_logger().warning(
                f"a command on {topic} not forwarded: "
                + (f"{values.size} values, not {b - a}" if values.shape != (b - a,)
                   else f"not finite {values.tolist()}") + f" ({self.refused} in all)",
                throttle_duration_sec=5.0)
            return None
        measured = self._measured_values() if self._limiter.last[i] is None else None
        if self._measurable[i] and self._limiter.unreferenced(i, measured):
            self._drop_unreferenced(topic)
            return None
        if self._limiter.rate_limited(i):
            self._unreferenced_run = False
        out = self._limiter.part(i, values, measured, now)
        if np.array_equal(out, values):
            return msg
        return Float64MultiArray(layout=msg.layout, data=out.tolist())

    def _drop_unreferenced(self, topic: str) -> None:
        """A command not forwarded: its change would count from nothing (no measured joints
        since the start or the new episode). Said when a run of them starts, then at most
        every 5 s while it lasts."""
        self.unreferenced += 1
        if not self._unreferenced_run:
            self._unreferenced_run = True
            self._unreferenced_log = LogThrottle(5.0)
        if self._unreferenced_log.due():
            self.get_logger().warning(
                f"a command on {topic} not forwarded: no joint state on {self._state_topic} "
                f"with the joints {', '.join(self._missing_joints())} yet (since the start or "
                "the new episode), so nothing to count its change per tick from; commands "
                f"are forwarded once one comes ({self.unreferenced} not forwarded in all)")

    def _missing_joints(self) -> list:
        """The joints the filter counts from that the newest state lacks (all: no state)."""
        names = set(self._measured.name) if self._measured is not None else set()
        wanted = [j for joints in self._joints.values() for j in joints]
        return [j for j in wanted if j not in names] or wanted

    def _on_params(self, params) -> SetParametersResult:
        """Check values set at run time (ranges and read-only: the descriptors); applied by
        ``_after_params`` once every check passed."""
        mode = next((p.value for p in params if p.name == "mode"), None)
        beta = next((p.value for p in params if p.name == "beta"), None)
        if mode is not None or beta is not None:
            try:
                self.core.check_mode(mode if mode is not None else self.core.mode, beta)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _after_params(self, params) -> None:
        """Apply values set at run time (checked and taken already): every parameter that is
        not read-only acts from here on."""
        values = {p.name: p.value for p in params}
        if "mode" in values or "beta" in values:
            self.core.set_mode(values.get("mode", self.core.mode), values.get("beta"))
            self.get_logger().info(f"mode {self.core.mode} (beta {self.core.beta})")
        if "sync_timeout" in values:
            self.sync_timeout = float(values["sync_timeout"])
            self.get_logger().info(f"sync_timeout {self.sync_timeout:g} s")
        if "joy_timeout" in values:
            self.joy_timeout = float(values["joy_timeout"])
            self.get_logger().info(f"joy_timeout {self.joy_timeout:g} s")

    def _on_state(self, msg: JointState) -> None:
        stamp = stamp_ns(msg.header.stamp)
        if stamp == self._stamps_seen:
            # the bridge publishes a state again when no answer reached it: one forwarded (lost,
            # or sent while the bridge was not matched yet) goes again; one not forwarded yet
            # waits, as before (its sources answer again: nodes.common.LastAnswer)
            if self._forward is not None and self._forward[0] == stamp:
                self._publish(*self._forward[1:])
                self.resent += 1
                self.get_logger().info(f"state {stamp * 1e-9:.3f} s published again: its "
                                       f"forward sent again ({self.resent} in all)",
                                       throttle_duration_sec=10.0)
            return
        self._stamps_seen = stamp
        self._measured = msg
        self._state_time = time.monotonic()
        self.core.on_state(stamp)
        self._flush(self.core.ready())

    def _on_command(self, source: str, topic: str, msg) -> None:
        if self.sync:
            self.core.on_answer(source, topic, msg)
            self._flush(self.core.ready())
        elif self.core.passthrough(source):
            gate = self._gate
            if gate.paired:  # (a status comes with each state: a command's episode is known)
                named = layout_stamp(msg.layout)
                if gate.stale_answer(named):
                    gate.stale += 1
                    return
                if gate.waits(named):
                    gate.hold(source, topic, msg, named, time.monotonic())
                    return
            self._pass(source, topic, msg)

    def _pass(self, source: str, topic: str, msg) -> None:
        """Without sync: forward ``source``'s ``msg`` on ``topic``, through the filter (the
        change allowed: the control ticks since the last forward, on the node's clock)."""
        msg = self._limited(topic, msg, self.get_clock().now().nanoseconds * 1e-9)
        if msg is None:
            return
        if topic == self.core.topics[0]:
            self.pub_source.publish(String(data=source))
            self.core.forwarded[source] += 1
        self.pubs[topic].publish(msg)

    def _check_timeout(self) -> None:
        if self.core.state_pending and self._state_time is not None and \
                time.monotonic() - self._state_time > self.sync_timeout:
            missing = ", ".join(self.core.missing()) or "answer"  # (before a forward clears it)
            out = self.core.force()
            if out is not None:
                self.timeouts += 1
                # at most a line every 5 s for each cause
                if self._timeout_logs.setdefault(missing, LogThrottle(5.0)).due():
                    self.get_logger().warning(
                        f"state {self._stamps_seen * 1e-9:.3f} s: no {missing} within "
                        f"sync_timeout ({self.sync_timeout:g} s): forwarded "
                        f"{self.core.last_choice}'s answer ({self.timeouts} such in all)")
                self._flush(out)
            else:  # nothing to forward: the robot waits; say for whom
                missing = self.core.unanswered()
                # sources that never answered yet are still starting (a policy node loading
                # its checkpoint): said, not warned about
                # (a source outside sync_sources answers only with a command after the state)
                named = [s if s in self.core.sync_sources else f"{s} since the state came"
                         for s in missing]
                text = (f"state {self._stamps_seen * 1e-9:.3f} s unanswered for "
                        f"{time.monotonic() - self._state_time:.1f} s: no answer from "
                        f"{', '.join(named) or 'the chosen source'} (mode {self.core.mode}")
                if missing and not any(self.core.answers[s] for s in missing):
                    self.get_logger().info(text + "; none has answered yet): nothing forwarded",
                                           throttle_duration_sec=10.0)
                else:
                    self.get_logger().warning(text + "): nothing forwarded",
                                              throttle_duration_sec=10.0)

    def _flush(self, out) -> None:
        if out is None:
            return
        if self.core.episode_started:  # (known from the state's own status: exact)
            self._limiter.reset()
        # one tick a state: the change allowed counts from the states' stamps (one control
        # period a state in lockstep: one whole tick, the same as per forward)
        now = None if self._stamps_seen is None else self._stamps_seen * 1e-9
        out = [(t, m) for t, m in ((t, self._limited(t, m, now)) for t, m in out)
               if m is not None]
        self._forward = (self._stamps_seen, self.core.last_choice, out)
        self._publish(self.core.last_choice, out)

    def _publish(self, choice: str, out) -> None:
        # the source first: a recorder then has it before the robot's next state (its clock,
        # in lockstep), which the forwarded command releases
        self.pub_source.publish(String(data=choice))
        for topic, msg in out:
            self.pubs[topic].publish(msg)

    def _on_joy(self, msg: Joy) -> None:
        self._joy_time = time.monotonic()
        count = len(msg.buttons)
        if count <= self.button and count not in self._short_joys:
            # (a pad, or a driver's layout, without that button: it is never held)
            self._short_joys.add(count)
            self.get_logger().warning(
                f"a Joy with {count} buttons: intervention_button {self.button} is not among "
                "them, so it counts as released (no intervention); give the index of a button "
                "of this pad (intervention_button)")
        self.core.on_joy(count > self.button and bool(msg.buttons[self.button]),
                         stamp_ns(msg.header.stamp))
        if self._joy_silent:
            self._joy_silent = False
            self.get_logger().info("a Joy again: the intervention button is read again")
        if self.sync:
            self._flush(self.core.ready())

    def _check_joy(self) -> None:
        """Intervening with no Joy for ``joy_timeout`` s: said (the intervention source keeps
        driving; handing back to the policy is the person's, by releasing the button)."""
        silent = self.joy_timeout > 0 and self.core.mode == "intervention" and \
            self.core.intervening and self._joy_time is not None and \
            time.monotonic() - self._joy_time > self.joy_timeout
        if silent and not self._joy_silent:
            self._joy_log = LogThrottle(5.0)   # (a new silence: said at once)
        self._joy_silent = silent
        if silent and self._joy_log.due():
            self.get_logger().warning(
                f"intervening, but no Joy for {time.monotonic() - self._joy_time:.1f} s "
                f"(joy_timeout {self.joy_timeout:g} s): the last Joy held intervention_button "
                f"{self.button}, so {self.core.intervention_source} still drives; the policy "
                "drives again only once a Joy with the button released comes")

    def _on_episode(self, raw: bytes) -> None:
        stamp, episode = take_status(self, self._episode_topic, raw) or (None, None)
        if episode is None:
            return
        if self.sync:  # paired with its state by the stamp (MuxCore.on_status)
            self.core.on_status(stamp, episode)
            self._flush(self.core.ready())
        else:
            new = episode != self._episode
            if new:
                self._episode = episode
                self.core.new_episode()
                self._limiter.reset()
            self._gate.on_status(stamp, new)
            if new and self._measured is not None and not (
                    self._gate.paired and stamp_ns(self._measured.header.stamp) >= stamp):
                # a state from before the episode's start is no reference (the robot may have
                # been put back since); once statuses come with the states (paired), the
                # episode's first state is known by its stamp (the gate waits for it)
                self._measured = None
            if self._gate.held:
                self._release()

    def _publish_diagnostics(self) -> None:
        values = {"mode": self.core.mode, "beta": self.core.beta,
                  "connected": str(all(self.count_publishers(t) for t in self._inputs)).lower(),
                  "intervening": str(self.core.intervening).lower(),
                  "joy_silent": str(self._joy_silent).lower(),
                  "sync_timeouts": self.timeouts, "late_answers_dropped": self.core.dropped_late,
                  "forwards_resent": self.resent,
                  "clamped_commands": self._limiter.clamped_commands,
                  "clamped_values": self._limiter.clamped_values,
                  "refused_commands": self.refused,
                  "no_reference_dropped": self.unreferenced,
                  **({} if self.sync else {"held_for_status": self._gate.held_total,
                                           "stale_dropped": self._gate.stale}),
                  **{f"forwarded_{s}": n for s, n in self.core.forwarded.items()}}
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [DiagnosticStatus(level=DiagnosticStatus.WARN
                                       if self.timeouts or self._joy_silent
                                       else DiagnosticStatus.OK,
                                       name=f"{self.get_name()}: mux", message=self.core.mode,
                                       hardware_id="mux",
                                       values=[KeyValue(key=k, value=str(v))
                                               for k, v in values.items()])]
        self.pub_diag.publish(msg)


def main(args=None) -> int:
    return run(CommandMux, args)


if __name__ == "__main__":
    raise SystemExit(main())
