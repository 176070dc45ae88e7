"""A policy on a real robot: the policy node on the robot's own topics.

    ros2 launch robot_imitation policy.launch.py checkpoint:=runs/train/run_X/best_val \
        joint_states:=/my_robot/joint_states arm_commands:=/my_arm_controller/commands

The node subscribes to the topics of the checkpoint's spec and publishes on its action topics;
remaps point them at the robot's. It commands on a timer at the control rate (wall clock), with
the action limits the checkpoint carries (the robot's joint limits and maximum change per tick;
config/policy.yaml can name a robot config or limits instead) and the stale-state safety; it
starts inactive when autostart:=false (drive it with `ros2 lifecycle set /policy_node
configure|activate`).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint folder to run"),
        DeclareLaunchArgument("params", default_value="policy.yaml",
                              description="parameter file in config/"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at start"),
        DeclareLaunchArgument("joint_states", default_value="/joint_states"),
        DeclareLaunchArgument("arm_commands", default_value="/arm_controller/commands"),
        DeclareLaunchArgument("gripper_commands", default_value="/gripper_controller/commands"),
        Node(package="robot_imitation", executable="policy_node", name="policy_node",
             output="screen",
             parameters=[PathJoinSubstitution([config, LaunchConfiguration("params")]),
                         {"checkpoint": LaunchConfiguration("checkpoint"), "trigger": "timer",
                          "autostart": LaunchConfiguration("autostart")}],
             remappings=[("/joint_states", LaunchConfiguration("joint_states")),
                         ("/arm_controller/commands", LaunchConfiguration("arm_commands")),
                         ("/gripper_controller/commands",
                          LaunchConfiguration("gripper_commands"))]),
    ])
