"""Gamepad teleop: sensor_msgs/Joy -> Cartesian end-effector velocity -> joint commands.

Subscribes to ``joy`` (as the ``joy`` package's ``joy_node`` / ``game_controller_node``
publish it) and ``joint_states`` (joints taken by name). While the deadman button is held, it
integrates an end-effector target pose from the stick axes, turns it into arm joint position
targets by differential IK on the task's robot model (``teleop.core``), and publishes them on
``/<arm_controller>/commands`` and the gripper opening on ``/<gripper_controller>/commands``
(std_msgs/Float64MultiArray, reliable) at the control rate: the topics the scripted expert
and a policy use. With the deadman released nothing is published at all (the robot holds its
last command). Episode buttons call the recorder's ``start`` / ``stop`` / ``discard`` services
(std_srvs/Trigger) on the button's rising edge, asynchronously.

``TeleopNode`` (here) is the plumbing shared with the keyboard teleop: parameters, joint state
intake, publishers, the control timer and the recorder service calls.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .common import (COMMAND_PUB_QOS, SENSOR_QOS, STATE_QOS, LogThrottle, MatchedReport, Param,
                     checked_subscription, declare_all, run)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Joy, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ..sim.tasks import TaskSim  # noqa: E402
from ..teleop.core import (AxisMap, RisingEdges, TeleopController, button,  # noqa: E402
                           joy_twist, positions_by_name)

# Episode actions -> the recorder's std_srvs/Trigger services.
EPISODE_SERVICES = {"episode_start": "start", "episode_keep": "stop",
                    "episode_discard": "discard"}
GRIPPER_ACTIONS = {"gripper_open": "open", "gripper_close": "close",
                   "gripper_toggle": "toggle"}
# The gamepad's axes: (motion, default axis, default scale, what it drives).
AXES = (("linear_x", 1, 0.15, "x velocity"), ("linear_y", 0, 0.15, "y velocity"),
        ("linear_z", 3, 0.15, "z velocity"), ("angular_x", -1, 0.5, "roll rate"),
        ("angular_y", -1, 0.5, "pitch rate"), ("angular_z", 2, 0.5, "yaw rate"))
# The gamepad's buttons: parameter button_<action> (see the table).
BUTTON_ACTIONS = ("gripper_open", "gripper_close", "episode_start", "episode_keep",
                  "episode_discard")


def _speed_cap(name: str):
    """``Param.check`` of a speed cap: 0 is refused (it is a cap; "0 = no cap" is no meaning
    here), negatives are out of the range rcl enforces."""
    def check(value) -> str | None:
        if not value > 0:
            return f"parameter {name}={value!r}: must be > 0 (a speed cap; 0 would not cap)"
        return None
    return check


def _corner(name: str):
    """``Param.check`` of a workspace corner: 3 finite numbers (a NaN left its axis open)."""
    def check(value) -> str | None:
        v = [float(x) for x in value]
        if len(v) != 3 or not all(math.isfinite(x) for x in v):
            return f"parameter {name}={v!r}: must be 3 finite numbers (x, y, z in m)"
        return None
    return check


class TeleopNode(Node):
    """Shared teleop plumbing. Subclasses say whether motion is enabled and what the twist is
    (``enabled``, ``twist``), may read their input device in ``poll_input``, and trigger
    ``action(name)`` for gripper / episode / release events."""

    NODE_NAME = "teleop"
    # the parameters every front end shares (a front end's table adds its own)
    PARAMETERS = (
        Param("task", "push", "task whose robot model the IK uses (config/tasks name or path)",
              read_only=True),
        Param("robot", "", "robot override (as the bridge's); empty: the task's robot",
              read_only=True),
        Param("rate", 0.0, "command rate while engaged (Hz); 0: the task's control rate",
              read_only=True, min_value=0.0, max_value=1000.0),
        Param("arm_controller", "arm_controller", "arm controller name: publishes "
              "/<name>/commands", read_only=True),
        Param("gripper_controller", "gripper_controller", "gripper controller name: publishes "
              "/<name>/commands", read_only=True),
        Param("recorder", "episode_recorder", "node name of the episode recorder: episode "
              "inputs call /<name>/start, /<name>/stop (keep), /<name>/discard", read_only=True),
        Param("max_linear", 0.15, "end-effector speed cap (m/s; > 0)", read_only=True,
              min_value=0.0, max_value=2.0, check=_speed_cap("max_linear")),
        Param("max_angular", 0.5, "end-effector angular speed cap (rad/s; > 0)",
              read_only=True, min_value=0.0, max_value=6.0, check=_speed_cap("max_angular")),
        Param("max_lead", 0.05, "how far the pose target may run ahead of the measured end "
              "effector (m): no wind-up when blocked", read_only=True, min_value=0.001,
              max_value=1.0),
        Param("workspace_low", [-0.9, -0.9, 0.01], "lower xyz corner of the box the "
              "end-effector target stays in (m, world frame; 3 finite floats)", read_only=True,
              check=_corner("workspace_low")),
        Param("workspace_high", [0.9, 0.9, 0.9], "upper xyz corner of the box the end-effector "
              "target stays in (m, world frame; 3 finite floats, each above workspace_low's)",
              read_only=True, check=_corner("workspace_high")),
        Param("max_state_age", 0.5, "no command while the newest joint state arrived longer "
              "ago than this (s, wall clock)", read_only=True, min_value=0.01, max_value=60.0),
    )

    def __init__(self, name: str):
        super().__init__(name)
        # every parameter of the front end's table, before anything else
        self.p = p = declare_all(self, self.PARAMETERS)
        self.check_parameters(p)
        self.recorder = p["recorder"]
        self.max_state_age = p["max_state_age"]
        self.sim = TaskSim(p["task"], p["robot"] or None)
        self.controller = TeleopController(
            self.sim, max_linear=p["max_linear"], max_angular=p["max_angular"],
            rate=p["rate"] or None, max_lead=p["max_lead"],
            workspace=(p["workspace_low"], p["workspace_high"]))
        self.period = self.controller.arm.period
        self.joint_names = self.sim.robot.joint_names
        self._bad_state_log = LogThrottle(5.0)  # a joint state it cannot read: a line per 5 s
        self.pub_arm = self.create_publisher(Float64MultiArray, f"/{p['arm_controller']}/commands",
                                             COMMAND_PUB_QOS)
        self.pub_grip = self.create_publisher(Float64MultiArray,
                                              f"/{p['gripper_controller']}/commands",
                                              COMMAND_PUB_QOS)
        # what a recorder waits for before a start (the commands from the first on)
        MatchedReport(self, (self.pub_arm, self.pub_grip),
                      self.create_publisher(DiagnosticArray, "/diagnostics", 10))
        checked_subscription(self, JointState, "joint_states", self._on_joint_state, STATE_QOS)
        self.episode_clients = {action: self.create_client(Trigger, f"/{self.recorder}/{srv}")
                                for action, srv in EPISODE_SERVICES.items()}
        self._q = None
        self._q_time = -np.inf
        self._pending_gripper: list = []
        self._stale_logged = False
        self.commands = 0
        self.create_timer(self.period, self._on_tick)

    # ------------------------------------------------------------------ hooks for front ends
    def check_parameters(self, p: dict) -> None:
        """Refuse (``ValueError``, one line) parameters that do not go together; called at
        start, before anything else is made."""
        low, high = list(p["workspace_low"]), list(p["workspace_high"])
        if not all(lo < hi for lo, hi in zip(low, high)):
            raise ValueError(f"workspace_low {low} must be below workspace_high {high} on "
                             "every axis")

    def poll_input(self, now: float) -> None:
        """Read the input device (called each control tick before ``enabled``/``twist``)."""

    def enabled(self, now: float) -> bool:
        raise NotImplementedError

    def twist(self, now: float) -> np.ndarray:
        raise NotImplementedError

    def on_release(self) -> None:
        """The operator asked to stop commanding (front ends with a latched engagement)."""

    # ------------------------------------------------------------------ actions
    def action(self, name: str) -> None:
        """Gripper actions apply at the next tick, while engaged; episode actions at once."""
        if name in GRIPPER_ACTIONS:
            self._pending_gripper.append(GRIPPER_ACTIONS[name])
        elif name in EPISODE_SERVICES:
            self.call_recorder(name)
        elif name == "release":
            self.on_release()
        else:
            raise ValueError(f"unknown teleop action {name!r}")

    def call_recorder(self, action: str) -> None:
        """Call the recorder's service for ``action`` without waiting; log its answer."""
        client = self.episode_clients[action]
        if not client.service_is_ready():
            self.get_logger().warning(f"{action.replace('_', ' ')}: service {client.srv_name} is "
                                   f"not available (is the recorder '{self.recorder}' "
                                   "running?); nothing done")
            return
        self.get_logger().info(f"{action.replace('_', ' ')}: calling {client.srv_name}")
        future = client.call_async(Trigger.Request())
        future.add_done_callback(lambda f, a=action, s=client.srv_name:
                                 self._on_recorder_answer(a, s, f))

    def _on_recorder_answer(self, action: str, srv: str, future) -> None:
        try:
            resp = future.result()
        except Exception as exc:  # noqa: BLE001 - report any failure of the call
            self.get_logger().error(f"{srv} failed: {type(exc).__name__}: {exc}")
            return
        if resp is None:
            self.get_logger().error(f"{srv}: no answer")
        elif resp.success:
            self.get_logger().info(f"{srv}: {resp.message or 'ok'}")
        else:
            self.get_logger().warning(f"{srv} refused: {resp.message}")

    # ------------------------------------------------------------------ state and control loop
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q = positions_by_name(msg.name, msg.position, self.joint_names)
        except ValueError as exc:
            if self._bad_state_log.due():
                self.get_logger().error(f"joint_states: {exc}")
            return
        if not np.all(np.isfinite(q)):
            # a broken driver's NaN or inf: dropped, as a state it cannot read (it ended the
            # node in its timer); no command comes from it, the next good state resumes
            if self._bad_state_log.due():
                bad = [n for n, v in zip(self.joint_names, q) if not math.isfinite(v)]
                self.get_logger().error(f"joint_states with NaN or infinite positions of {bad} "
                                        "dropped: no command from it")
            return
        self._q = q
        self._q_time = time.monotonic()

    def _on_tick(self) -> None:
        now = time.monotonic()
        self.poll_input(now)
        enabled = self.enabled(now)
        if enabled and now - self._q_time > self.max_state_age:
            if not self._stale_logged:
                self.get_logger().warning("teleop enabled but no joint_states within "
                                       f"{self.max_state_age} s: no command")
                self._stale_logged = True
            enabled = False
        elif self._q is not None and now - self._q_time <= self.max_state_age:
            self._stale_logged = False
        was_engaged = self.controller.engaged
        out = self.controller.update(enabled, self._q, self.twist(now) if enabled else
                                     np.zeros(6), self.period)
        if out is None:
            if self._pending_gripper:
                self.get_logger().info("gripper input ignored: teleop not engaged")
                self._pending_gripper.clear()
            if was_engaged:
                self.get_logger().info("released: no more commands")
            return
        if not was_engaged:
            p = self.controller.arm.target_pose
            self.get_logger().info(f"engaged at end effector ({p[0]:.3f}, {p[1]:.3f}, "
                                   f"{p[2]:.3f})")
        for a in self._pending_gripper:
            value = self.controller.gripper_action(a)
            if value is not None:
                self.get_logger().info(f"gripper {a}: opening {value:.2f}")
        self._pending_gripper.clear()
        arm, grip = out
        self.pub_arm.publish(Float64MultiArray(data=[float(v) for v in arm]))
        if self.controller.has_gripper:
            self.pub_grip.publish(Float64MultiArray(data=[float(self.controller.gripper.value)]))
        self.commands += 1


class JoyTeleop(TeleopNode):
    """Gamepad front end. Defaults fit the ``joy`` package's game_controller_node layout
    (SDL: axes 0/1 left stick x/y, 2/3 right stick x/y; buttons 0 A, 1 B, 2 X, 3 Y, 4 BACK,
    6 START, 9 LEFTSHOULDER); remap with the parameters for other devices."""

    NODE_NAME = "joy_teleop"
    PARAMETERS = TeleopNode.PARAMETERS + tuple(
        Param(f"{kind}_{motion}", default, doc + what, read_only=True, **limits)
        for motion, axis, scale, what in AXES
        for kind, default, doc, limits in (
            ("axis", axis, "joystick axis index (-1: unused) for the end-effector ",
             {"min_value": -1, "max_value": 255}),
            ("scale", scale, "value at full deflection (m/s or rad/s; the speed caps apply) "
             "of the end-effector ", {"min_value": -10.0, "max_value": 10.0}),
            ("invert", False, "flip the sign of the end-effector ", {}))) + (
        Param("deadzone", 0.1, "axis values below this magnitude count as 0 (the rest is "
              "rescaled to 0..1)", read_only=True, min_value=0.0, max_value=0.9),
        Param("deadman_button", 9, "button that must be held for any motion or command; -1 "
              "disables the deadman (commands whenever joy messages arrive)", read_only=True,
              min_value=-1, max_value=255),
        Param("joy_timeout", 0.5, "release when no joy message came for this long (s; keep the "
              "joy driver's autorepeat_rate on); 0 disables", read_only=True, min_value=0.0,
              max_value=60.0),
        Param("button_gripper_open", 1, "button: open the gripper (with the deadman held); -1: "
              "none", read_only=True, min_value=-1, max_value=255),
        Param("button_gripper_close", 0, "button: close the gripper (with the deadman held); "
              "-1: none", read_only=True, min_value=-1, max_value=255),
        Param("button_episode_start", 6, "button: start an episode (recorder start); -1: none",
              read_only=True, min_value=-1, max_value=255),
        Param("button_episode_keep", 3, "button: stop and keep the episode (recorder stop); "
              "-1: none", read_only=True, min_value=-1, max_value=255),
        Param("button_episode_discard", 4, "button: discard the episode (recorder discard); "
              "-1: none", read_only=True, min_value=-1, max_value=255),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        p = self.p
        self.mapping = {motion: AxisMap(p[f"axis_{motion}"], p[f"scale_{motion}"],
                                        p[f"invert_{motion}"]) for motion, *_ in AXES}
        self.deadzone = p["deadzone"]
        self.deadman = p["deadman_button"]
        self.joy_timeout = p["joy_timeout"]
        self.buttons = {action: p[f"button_{action}"] for action in BUTTON_ACTIONS}
        self._button_params = [(name, p[name]) for name in
                               ("deadman_button", *(f"button_{a}" for a in BUTTON_ACTIONS))]
        self._bad_joy_log = LogThrottle(5.0)
        self._axes_told: set = set()  # the axis counts whose unread axes were logged
        self._buttons_told: set = set()  # the same for the button counts
        self.edges = RisingEdges()
        self._joy = None
        self._joy_time = -np.inf
        checked_subscription(self, Joy, "joy", self._on_joy, SENSOR_QOS)
        deadman = (f"hold button {self.deadman} (deadman) to move" if self.deadman >= 0
                   else "deadman disabled: commands whenever joy messages arrive")
        self.get_logger().info(f"joy teleop for task '{self.sim.cfg.name}' at "
                               f"{1 / self.period:g} Hz: {deadman}")

    def check_parameters(self, p: dict) -> None:
        """Each configured button does one thing: a deadman that is also an action's button
        fired that action at every press (deadman_button 4 discarded the episode)."""
        super().check_parameters(p)
        taken: dict = {}
        for name in ("deadman_button", *(f"button_{a}" for a in BUTTON_ACTIONS)):
            index = p[name]
            if index < 0:
                continue
            if index in taken:
                raise ValueError(f"{taken[index]} and {name} are both button {index}: each "
                                 "needs a button of its own (-1: none)")
            taken[index] = name

    def _on_joy(self, msg: Joy) -> None:
        if not all(math.isfinite(a) for a in msg.axes):
            # a broken device or driver: the message is not taken (no motion from it; the
            # teleop releases once joy_timeout passes without a good one)
            if self._bad_joy_log.due():
                self.get_logger().error(f"joy message with NaN or infinite axes ignored: "
                                        f"{list(msg.axes)}")
            return
        unread = [f"axis_{m} {a.axis}" for m, a in self.mapping.items() if a.axis >= len(msg.axes)]
        if unread and len(msg.axes) not in self._axes_told:
            self._axes_told.add(len(msg.axes))
            self.get_logger().warning(f"{', '.join(unread)}: the joy messages have "
                                      f"{len(msg.axes)} axes, so these motions stay at 0")
        if len(msg.buttons) not in self._buttons_told:  # once per button count
            self._buttons_told.add(len(msg.buttons))
            n = len(msg.buttons)
            beyond = [f"{name} {i}" for name, i in self._button_params if i >= n]
            if beyond:
                self.get_logger().warning(
                    f"{', '.join(beyond)}: the joy messages have {n} buttons, so these are "
                    "never pressed" + (" (no motion at all)" if self.deadman >= n else ""))
        self._joy = msg
        self._joy_time = time.monotonic()
        pressed = {name: button(msg.buttons, idx) for name, idx in self.buttons.items()}
        for name in self.edges.update(pressed):
            self.action(name)

    def _joy_fresh(self, now: float) -> bool:
        return self._joy is not None and (self.joy_timeout <= 0
                                          or now - self._joy_time <= self.joy_timeout)

    def enabled(self, now: float) -> bool:
        if not self._joy_fresh(now):
            return False
        return self.deadman < 0 or button(self._joy.buttons, self.deadman)

    def twist(self, now: float) -> np.ndarray:
        return joy_twist(self._joy.axes, self.mapping, self.deadzone)


def main(args=None) -> int:
    return run(JoyTeleop, args)


if __name__ == "__main__":
    raise SystemExit(main())
