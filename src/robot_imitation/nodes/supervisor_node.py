"""Scripted supervisor node: holds the command mux's intervention button as a person would.

In a human-gated DAgger (HG-DAgger) run the policy drives and a person takes over while holding
a joystick button. In simulation this node stands in for the person: it watches the robot's
state topics (the end effector, and the object and the goal of a contact task or the target of
a reach, assembled with the spec like every other node), runs ``sim.supervisor.InterventionGate`` and publishes
``sensor_msgs/Joy`` on ``joy`` with ``button`` held while the gate wants the expert to drive.

It answers every state once, with the Joy stamped like the state, and starts afresh at each
new episode (``episode/status``): with the mux's ``joy_sync`` the choice of who drives each
lockstep step is then the same on every run.
"""
from __future__ import annotations

import dataclasses

from .common import (STATE_PUB_QOS, STATE_QOS, STATUS_QOS, LastAnswer, MatchedReport, Param,
                     checked_subscription, declare_all, from_sec, params_of, run, stamp_ns,
                     state_to_answer, take_state, to_sec)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Joy  # noqa: E402

from ..observation import ObservationAssembler, message_class  # noqa: E402
from ..pairing import stamp_of  # noqa: E402
from ..sim.supervisor import InterventionGate  # noqa: E402
from ..spec import Spec, SpecError  # noqa: E402

WATCHED = ("ee_pose", "object_pose", "goal_pose", "target_pose")


class ScriptedSupervisor(Node):
    NODE_NAME = "scripted_supervisor"
    # the InterventionGate's settings: their defaults, limits and descriptions, from its fields
    GATE_PARAMETERS = tuple(dataclasses.replace(p, read_only=True)
                            for p in params_of(InterventionGate))
    PARAMETERS = (
        Param("spec", "push", "observation spec whose pose topics are watched (config/specs "
              "name or path)", read_only=True),
        Param("button", 10, "Joy button held while the expert should drive (the mux's "
              "intervention_button)", read_only=True, min_value=0, max_value=127),
    ) + GATE_PARAMETERS

    def __init__(self):
        super().__init__(self.NODE_NAME)
        p = declare_all(self, self.PARAMETERS)
        self.button = p["button"]
        self.gate = InterventionGate(**{g.name: p[g.name] for g in self.GATE_PARAMETERS})
        self.spec = Spec.load(p["spec"])
        self.period = round(1e9 / self.spec.control_rate)
        fields = [f for f in self.spec.observations if f.key in WATCHED]
        if not any(f.key == "ee_pose" for f in fields):
            raise SpecError(f"spec {self.spec.name} has no ee_pose: the supervisor watches the "
                            "end effector")
        self.assembler = ObservationAssembler(self.spec, fields)
        # reliable: with the mux's joy_sync a lost Joy would stall the step until its timeout
        self.pub = self.create_publisher(Joy, "joy", STATE_PUB_QOS)
        # what a recorder waits for before a start (a supervised rig records /joy)
        MatchedReport(self, (self.pub,), self.create_publisher(DiagnosticArray, "/diagnostics", 10))
        for topic, mtype in self.assembler.topics.items():
            # raw: the fields read straight from the CDR bytes (observation.on_raw); a
            # malformed message is said and dropped (take_state)
            self.create_subscription(message_class(mtype), topic,
                                     lambda msg, t=topic: self._on_state(t, msg), STATE_QOS,
                                     raw=True)
        checked_subscription(self, DiagnosticArray, "episode/status", self._on_status,
                             STATUS_QOS)
        self._states = {}     # stamp (ns) -> (header stamp, observation), not yet answered
        self._episodes = {}   # stamp (ns) -> episode number
        self._episode = None
        self._answered = -1
        self.last = LastAnswer()  # sent again when the bridge republishes its state
        self.get_logger().info(f"supervising {[f.key for f in fields]}: {self.gate}")

    def _on_state(self, topic: str, msg) -> None:
        if not take_state(self, self.assembler, topic, msg):
            return
        ready = state_to_answer(self.assembler, (self.pub,))
        if ready is not None:
            self._states[stamp_of(ready[0])] = (from_sec(ready[0]), ready[1])
            self._answer()
        else:
            self.last.again(self, self.assembler.repeated())

    def _on_status(self, msg: DiagnosticArray) -> None:
        values = {kv.key: kv.value for st in msg.status[:1] for kv in st.values}
        if "episode" in values:
            self._episodes[stamp_ns(msg.header.stamp)] = values["episode"]
            self._answer()

    def _answer(self) -> None:
        """Answer, in stamp order, the states the gate can judge: the gate must know that a new
        episode began before it judges the episode's first state. A state is judged once its
        episode status is in, or when it follows the last judged state by one control period
        (the next tick of the same episode: a reset's first state comes one physics step after
        the last, with its status)."""
        while self._states:
            t = min(self._states)
            if t in self._episodes:
                episode = self._episodes[t]
            elif self._answered >= 0 and abs(t - self._answered - self.period) < self.period / 4:
                episode = self._episode
            elif any(k > t for k in self._episodes):  # its status was lost: a later one is in
                del self._states[t]
                continue
            else:
                return
            header_stamp, obs = self._states.pop(t)
            self._answered = t
            if episode != self._episode:
                self._episode = episode
                self.gate.reset()
            held = self.gate.expert_drives(obs)
            buttons = [0] * (self.button + 1)
            buttons[self.button] = int(held)
            msg = Joy(buttons=buttons)
            msg.header.stamp = header_stamp
            self.last.publish(self.pub, msg, to_sec(header_stamp))
            for old in [k for k in self._episodes if k < t]:
                del self._episodes[old]


def main(args=None) -> int:
    return run(ScriptedSupervisor, args)


if __name__ == "__main__":
    raise SystemExit(main())
