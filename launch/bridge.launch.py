"""The MuJoCo bridge alone: a simulated robot for your own controllers.

    ros2 launch robot_imitation bridge.launch.py task:=reach mode:=realtime
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    return LaunchDescription([
        DeclareLaunchArgument("task", default_value="push", description="task name"),
        DeclareLaunchArgument("mode", default_value="realtime",
                              description="realtime or lockstep"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([config, "bridge.yaml"]),
                              description="bridge parameters (ros__parameters YAML)"),
        Node(package="robot_imitation", executable="mujoco_bridge", name="mujoco_bridge",
             output="screen",
             parameters=[LaunchConfiguration("params_file"),
                         {"task": LaunchConfiguration("task"),
                          "mode": LaunchConfiguration("mode")}]),
    ])
