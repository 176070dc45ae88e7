"""Scripted expert node: drives the robot on the same command topics a human's teleop would.

Subscribes to joint_states and the task's pose topics, assembles the observation with
``ObservationAssembler`` and publishes the expert's command on /<arm_controller>/commands
(std_msgs/Float64MultiArray) and /<gripper_controller>/commands.

trigger=state: answer every new state (all parts with one stamp) once; this is what the bridge's
lockstep mode waits for. trigger=timer: publish at the task's control rate from the newest state
(node clock, so `use_sim_time` paces it by /clock).
"""
from __future__ import annotations

import numpy as np

from .common import COMMAND_QOS, STATE_QOS, declare, run, to_sec

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from ..observation import ObservationAssembler, ObservationError  # noqa: E402
from ..sim.experts import make_expert  # noqa: E402
from ..sim.tasks import TaskSim  # noqa: E402


class ScriptedExpert(Node):
    NODE_NAME = "scripted_expert"

    def __init__(self):
        super().__init__(self.NODE_NAME)
        task = declare(self, "task", "push", "task whose expert runs (config/tasks name or path)",
                       read_only=True)
        robot = declare(self, "robot", "", "robot override (as the bridge's)", read_only=True)
        self.trigger = declare(self, "trigger", "state", "when to command", read_only=True,
                               choices=("state", "timer"))
        arm = declare(self, "arm_controller", "arm_controller", "arm controller name",
                      read_only=True)
        grip = declare(self, "gripper_controller", "gripper_controller",
                       "gripper controller name", read_only=True)
        self.interface = declare(self, "command_interface", "position", "what arm commands are",
                                 read_only=True, choices=("position", "velocity"))
        self.max_age = declare(self, "max_state_age", 0.2, "timer trigger: newest state older "
                               "than this (s, node clock) is stale: no command",
                               min_value=0.0, max_value=60.0)
        self.sim = TaskSim(task, robot or None)
        self.expert = make_expert(self.sim)
        self.period = self.sim.control_period
        pose_keys = ("ee_pose",) + tuple(self.sim.logic.pose_keys)
        self.assembler = ObservationAssembler(self.sim.robot.joint_names, pose_keys)
        self.pub_arm = self.create_publisher(Float64MultiArray, f"/{arm}/commands", COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64MultiArray, f"/{grip}/commands", COMMAND_QOS)
        self.create_subscription(JointState, "joint_states", self._on_joints, STATE_QOS)
        for key in pose_keys:
            self.create_subscription(PoseStamped, key,
                                     lambda msg, k=key: self._on_pose(k, msg), STATE_QOS)
        self.commands = 0
        self._stale_logged = False
        if self.trigger == "timer":
            self.create_timer(self.period, self._on_timer)
        self.get_logger().info(f"expert for task '{self.sim.cfg.name}', trigger {self.trigger}")

    def _on_joints(self, msg: JointState) -> None:
        try:
            self.assembler.on_joint_state(to_sec(msg.header.stamp), msg.name, msg.position,
                                          msg.velocity)
        except ObservationError as exc:
            self.get_logger().error(str(exc), throttle_duration_sec=5.0)
            return
        self._maybe_answer()

    def _on_pose(self, key: str, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self.assembler.on_pose(key, to_sec(msg.header.stamp), (p.x, p.y, p.z, o.w, o.x, o.y, o.z))
        self._maybe_answer()

    def _maybe_answer(self) -> None:
        if self.trigger != "state":
            return
        ready = self.assembler.synchronized()
        if ready is not None:
            self._command(ready[1])

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
        self._command(obs)

    def _command(self, obs: dict) -> None:
        action = self.expert(obs)
        n = self.sim.robot.n_arm
        arm = action[:n]
        if self.interface == "velocity":
            arm = np.clip((arm - obs["joint_pos"][:n]) / self.period,
                          -self.sim.robot.velocity_limits, self.sim.robot.velocity_limits)
        self.pub_arm.publish(Float64MultiArray(data=arm.tolist()))
        self.pub_grip.publish(Float64MultiArray(data=[float(action[n])]))
        self.commands += 1


def main(args=None) -> int:
    return run(ScriptedExpert, args)


if __name__ == "__main__":
    raise SystemExit(main())
