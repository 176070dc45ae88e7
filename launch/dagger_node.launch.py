"""The DAgger node: whole DAgger runs (demonstrations, BC, DAgger iterations) started over ROS.

    ros2 launch robot_imitation dagger_node.launch.py task:=reach out:=runs/dagger_reach
    ros2 param set /dagger iterations 5
    ros2 service call /dagger/run std_srvs/srv/Trigger
    ros2 topic echo /dagger/progress

The final policy's checkpoint comes on /dagger/checkpoint (latched) when a run is done. Each run
starts its own bridge, expert, policy node, mux and recorder (dagger.launch.py starts the same
processes for driving DAgger by hand).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    return LaunchDescription([
        DeclareLaunchArgument("task", default_value="push", description="built-in task"),
        DeclareLaunchArgument("out", default_value="runs/dagger",
                              description="output folder (each run writes run_<timestamp>)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="training device: auto, cpu, cuda or cuda:N"),
        Node(package="robot_imitation", executable="dagger_node", name="dagger", output="screen",
             parameters=[PathJoinSubstitution([config, "dagger.yaml"]),
                         {"task": LaunchConfiguration("task"),
                          "out": LaunchConfiguration("out"),
                          "device": LaunchConfiguration("device")}]),
    ])
