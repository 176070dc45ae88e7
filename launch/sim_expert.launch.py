"""Bridge and scripted expert: the simulated robot driven by its expert.

    ros2 launch robot_imitation sim_expert.launch.py task:=push mode:=lockstep
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    task = LaunchConfiguration("task")
    mode = LaunchConfiguration("mode")
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    lockstep = PythonExpression(["'", mode, "' == 'lockstep'"])
    return LaunchDescription([
        DeclareLaunchArgument("task", default_value="push", description="task name"),
        DeclareLaunchArgument("mode", default_value="realtime",
                              description="bridge timing: realtime or lockstep"),
        DeclareLaunchArgument("expert", default_value="true",
                              description="start the scripted expert"),
        Node(package="robot_imitation", executable="mujoco_bridge", name="mujoco_bridge",
             output="screen",
             parameters=[PathJoinSubstitution([config, "bridge.yaml"]),
                         {"task": task, "mode": mode}]),
        Node(package="robot_imitation", executable="scripted_expert", name="scripted_expert",
             output="screen", condition=IfCondition(LaunchConfiguration("expert")),
             parameters=[PathJoinSubstitution([config, "expert.yaml"]),
                         {"task": task,
                          "trigger": PythonExpression(["'state' if ", lockstep,
                                                       " else 'timer'"]),
                          "use_sim_time": PythonExpression(["not ", lockstep])}]),
    ])
