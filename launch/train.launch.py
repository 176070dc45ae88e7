"""The trainer node: Behavior Cloning runs started over ROS.

    ros2 launch robot_imitation train.launch.py dataset:=datasets/push out:=runs/push
    ros2 param set /trainer steps 20000
    ros2 service call /trainer/train std_srvs/srv/Trigger
    ros2 topic echo /trainer/progress

The best checkpoint's path comes on /trainer/checkpoint (latched) when a run is done.
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
                              description="dataset folder to train on"),
        DeclareLaunchArgument("out", default_value="runs/train",
                              description="output folder (each run writes run_<timestamp>)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="auto, cpu, cuda or cuda:N"),
        Node(package="robot_imitation", executable="trainer", name="trainer", output="screen",
             parameters=[PathJoinSubstitution([config, "trainer.yaml"]),
                         {"dataset": LaunchConfiguration("dataset"),
                          "out": LaunchConfiguration("out"),
                          "device": LaunchConfiguration("device")}]),
    ])
