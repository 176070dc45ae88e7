"""Record demonstrations on a real robot: joystick teleop and the episode recorder.

    ros2 launch robot_imitation record.launch.py dataset:=datasets/my_task spec:=my_spec.yaml \
        operator:=alice

The robot's own drivers provide joint states and take the commands; remap topics in your spec
and in config/teleop.yaml (arm_controller, gripper_controller) to match them.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    return LaunchDescription([
        DeclareLaunchArgument("dataset", default_value="datasets/demos",
                              description="dataset folder"),
        DeclareLaunchArgument("spec", default_value="push",
                              description="observation/action spec (name or path)"),
        DeclareLaunchArgument("task", default_value="push",
                              description="robot model used by the teleop's inverse kinematics"),
        DeclareLaunchArgument("operator", default_value="", description="who demonstrates"),
        Node(package="joy", executable="game_controller_node", name="joy"),
        Node(package="robot_imitation", executable="joy_teleop", name="joy_teleop",
             output="screen",
             parameters=[PathJoinSubstitution([config, "teleop.yaml"]),
                         {"task": LaunchConfiguration("task")}]),
        Node(package="robot_imitation", executable="episode_recorder", name="episode_recorder",
             output="screen",
             parameters=[PathJoinSubstitution([config, "recorder.yaml"]),
                         {"dataset": LaunchConfiguration("dataset"),
                          "spec": LaunchConfiguration("spec"),
                          "task": LaunchConfiguration("task"),
                          "operator": LaunchConfiguration("operator")}]),
    ])
