"""Scripted expert node: drives the robot on the same command topics a human's teleop would.

Subscribes to joint_states and the task's pose topics (also those only an expert sees, such as
push_obstacle's ``route_pose``), assembles the observation with ``ObservationAssembler`` and
publishes the expert's command on /<arm_controller>/commands (std_msgs/Float64MultiArray) and
/<gripper_controller>/commands.

trigger=state: answer every new state (all parts with one stamp) once; this is what the bridge's
lockstep mode waits for (each command names the state it answers, ``pairing``).
trigger=timer: publish at the task's control rate from the newest state (node clock, so
`use_sim_time` paces it by /clock); once statuses come with the states (one stamped like a
state), only from a state whose own status is in, so that a new episode resets the filter
first (a tick between an episode's first state and its status filtered the command from the
old episode's pose).

Safety: every command passes the action filter with the limits of the robot it drives (joint
limits, gripper 0..1, each joint's velocity limit per control tick, counted from its last
command; ``sim.experts``). A new episode (the bridge's status, ``episode_topic``) counts from
the measured joints again; with trigger=state each state waits for its own status once
statuses come (they are stamped like the state), so the reset is exact in lockstep and the
commands equal the gymnasium world's.

publish=plans: the expert's unfiltered plan instead (``Expert.plan``, a pure function of the
state), for a command mux that filters what it forwards: the DAgger graph's labels
(``ros.graphs.dagger_graph``), as the gymnasium learning world labels. The robot never gets them
but through the mux.
"""
from __future__ import annotations

import time

import numpy as np

from .common import (COMMAND_PUB_QOS, STATE_QOS, STATUS_QOS, LastAnswer, MatchedReport, Param,
                     answer_bytes, declare_all, run, state_to_answer, take_state, take_status)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from ..observation import ObservationAssembler, message_class  # noqa: E402
from ..pairing import TimerGate, stamp_of  # noqa: E402
from ..sim.experts import make_expert  # noqa: E402
from ..sim.tasks import TaskSim  # noqa: E402
from ..spec import FieldSpec, Spec, SpecError  # noqa: E402


class ScriptedExpert(Node):
    NODE_NAME = "scripted_expert"
    PARAMETERS = (
        Param("task", "push", "task whose expert runs (config/tasks name or path)",
              read_only=True),
        Param("robot", "", "robot override (as the bridge's)", read_only=True),
        Param("trigger", "state", "when to command", read_only=True, choices=("state", "timer")),
        Param("arm_controller", "arm_controller", "arm controller name", read_only=True),
        Param("gripper_controller", "gripper_controller", "gripper controller name",
              read_only=True),
        Param("command_interface", "position", "what arm commands are", read_only=True,
              choices=("position", "velocity")),
        Param("max_state_age", 0.2, "timer trigger: newest state older than this (s, node "
              "clock) is stale: no command", min_value=0.0, max_value=60.0),
        Param("spec", "", "observation/action spec (config/specs name or path); empty: the "
              "spec named after the task", read_only=True),
        Param("episode_topic", "/episode/status", "episode status (one with each state, "
              "stamped alike): a new episode's first command counts its change from the "
              "measured joints (trigger=state: each state waits for its status once statuses "
              "come); empty: none", read_only=True),
        Param("publish", "commands", "commands: through the action filter (what drives a "
              "robot); plans: the unfiltered plan, labels for a command mux that filters what "
              "it forwards (the DAgger graph)", read_only=True, choices=("commands", "plans")),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        p = declare_all(self, self.PARAMETERS)
        self.trigger = p["trigger"]
        self.interface = p["command_interface"]
        self.max_age = p["max_state_age"]
        self.plans = p["publish"] == "plans"
        self.sim = TaskSim(p["task"], p["robot"] or None)
        self.expert = make_expert(self.sim)
        self.period = self.sim.control_period
        self.spec = Spec.load(p["spec"]) if p["spec"] else Spec.for_task(p["task"])
        own = tuple(self.sim.logic.privileged_keys)
        needed = {"joint_pos", "ee_pose", *self.sim.logic.pose_keys} - set(own)
        fields = [f for f in self.spec.observations if f.key in needed]
        missing = needed - {f.key for f in fields}
        if missing:
            raise SpecError(f"spec {self.spec.name} lacks what the expert observes: {sorted(missing)}")
        # what only the expert sees (push_obstacle's side): no policy's spec has it; the bridge
        # publishes it, stamped with the rest of the state, on the topic of its name
        fields += [FieldSpec(k, f"/{k}", "geometry_msgs/msg/PoseStamped", "pose") for k in own]
        self.assembler = ObservationAssembler(self.spec, fields)
        self.pub_arm = self.create_publisher(Float64MultiArray, f"/{p['arm_controller']}/commands",
                                              COMMAND_PUB_QOS)
        self.pub_grip = self.create_publisher(Float64MultiArray,
                                              f"/{p['gripper_controller']}/commands",
                                              COMMAND_PUB_QOS)
        # what a recorder waits for before a start (the commands from the first on)
        MatchedReport(self, (self.pub_arm, self.pub_grip),
                      self.create_publisher(DiagnosticArray, "/diagnostics", 10))
        self.last = LastAnswer()  # sent again when the bridge republishes its state
        for topic, mtype in self.assembler.topics.items():
            # raw: the fields are read straight from the CDR bytes (observation.on_raw)
            self.create_subscription(message_class(mtype), topic,
                                     lambda msg, t=topic: self._on_state(t, msg), STATE_QOS,
                                     raw=True)
        self.commands = 0
        self._stale_logged = False
        self._statuses: dict = {}   # stamp (ns) -> episode, of the newest states' statuses
        self._status_seen = False
        self._status_newest = None  # trigger timer: the newest status's stamp (ns)
        self._timer_gate = TimerGate()  # trigger timer: a tick waits for its state's status
        self._episode = None        # the episode of the state answered last
        self._pending = None        # a complete state waiting for its status
        self._status_topic = p["episode_topic"]
        if p["episode_topic"] and not self.plans:  # (a plan needs no episode)
            # raw: the stamp and the episode read from the CDR bytes (one status per state)
            self.create_subscription(DiagnosticArray, p["episode_topic"], self._on_status,
                                     STATUS_QOS, raw=True)
        if self.trigger == "timer":
            self.create_timer(self.period, self._on_timer)
        self.get_logger().info(f"expert for task '{self.sim.cfg.name}', trigger {self.trigger}"
                               + (", publishing plans (unfiltered labels)" if self.plans else ""))

    def _on_state(self, topic: str, msg) -> None:
        if not take_state(self, self.assembler, topic, msg) or self.trigger != "state":
            return
        ready = state_to_answer(self.assembler, (self.pub_arm, self.pub_grip))
        if ready is not None:
            self._answer(ready)
        else:
            self.last.again(self, self.assembler.repeated())

    def _answer(self, ready) -> None:
        """Answer a complete state once its episode is known (its status, when statuses come:
        the first command of a new episode counts from the measured joints)."""
        stamp = stamp_of(ready[0])
        if self._status_seen and stamp not in self._statuses:
            self._pending = ready  # answered when its status comes
            return
        self._pending = None
        self._new_episode(self._statuses.get(stamp))
        self._command(ready[1], ready[0])

    def _new_episode(self, episode) -> None:
        if episode is not None and episode != self._episode:
            self._episode = episode
            self.expert.reset()

    def _on_status(self, raw: bytes) -> None:
        stamp, episode = take_status(self, self._status_topic, raw) or (None, None)
        if episode is None:
            return
        self._statuses[stamp] = episode
        if len(self._statuses) > 16:
            del self._statuses[next(iter(self._statuses))]
        self._status_seen = True
        if self.trigger == "timer":
            self._new_episode(episode)
            if self._status_newest is None or stamp > self._status_newest:
                self._status_newest = stamp
        elif self._pending is not None:
            pending = stamp_of(self._pending[0])
            if pending < stamp:  # its own status never came: answered as it is
                self._statuses.setdefault(pending, None)
            if pending <= stamp:
                self._answer(self._pending)

    def _on_timer(self) -> None:
        latest = self.assembler.latest()
        if latest is None:
            return
        stamp, obs = latest
        age = self.get_clock().now().nanoseconds * 1e-9 - stamp
        if self.max_age > 0 and age > self.max_age:
            if not self._stale_logged:
                self.get_logger().warn(f"state is {age:.3f} s old (> max_state_age): no command")
                self._stale_logged = True
            return
        self._stale_logged = False
        # once statuses come with the states, only a state whose own status is in
        now = time.monotonic()
        order = self._timer_gate.order(stamp_of(stamp), self._status_newest, now)
        if order:
            if now - self._timer_gate.since > max(self.max_age, 1.0):  # (statuses stopped?)
                self.get_logger().warning(self._timer_gate.describe(stamp, order, now),
                                          throttle_duration_sec=5.0)
            return
        self._command(obs, stamp)

    def _command(self, obs: dict, stamp: float) -> None:
        action = self.expert.plan(obs) if self.plans else self.expert(obs)
        n = self.sim.robot.n_arm
        arm = action[:n]
        if self.interface == "velocity":
            arm = np.clip((arm - obs["joint_pos"][:n]) / self.period,
                          -self.sim.robot.velocity_limits, self.sim.robot.velocity_limits)
        self.last.publish(self.pub_arm, answer_bytes(arm, stamp), stamp)
        self.last.publish(self.pub_grip, answer_bytes([float(action[n])], stamp), stamp)
        self.commands += 1


def main(args=None) -> int:
    return run(ScriptedExpert, args)


if __name__ == "__main__":
    raise SystemExit(main())
