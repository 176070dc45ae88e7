"""Teleoperation: Cartesian end-effector velocity -> joint position targets (plain Python core).

The ROS nodes are ``robot_imitation.nodes.joy_teleop_node`` (gamepad, ``sensor_msgs/Joy``) and
``robot_imitation.nodes.keyboard_teleop_node`` (terminal keys); both drive the logic here.
"""
from .core import (AxisMap, CartesianTeleop, GripperTarget, KeyboardTwist, TeleopController,
                   apply_deadzone, gripper_opening, joy_twist, key_action, positions_by_name)

__all__ = ["AxisMap", "CartesianTeleop", "GripperTarget", "KeyboardTwist", "TeleopController",
           "apply_deadzone", "gripper_opening", "joy_twist", "key_action", "positions_by_name"]
