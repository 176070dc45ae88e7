"""Record demonstrations in simulation: bridge, scripted expert (or joystick teleop), recorder.

    ros2 launch robot_imitation sim_record.launch.py task:=push dataset:=datasets/push
    ros2 launch robot_imitation sim_record.launch.py teleop:=joy   # a person drives instead

Episodes are started and stopped through the recorder's services (~/start, ~/stop, ~/discard),
or with the teleop's buttons; `robot-imitation record` automates it for the scripted expert.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    task = LaunchConfiguration("task")
    teleop = LaunchConfiguration("teleop")
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    use_expert = PythonExpression(["'", teleop, "' == 'none'"])
    use_joy = PythonExpression(["'", teleop, "' == 'joy'"])
    return LaunchDescription([
        DeclareLaunchArgument("task", default_value="push", description="task name"),
        DeclareLaunchArgument("dataset", default_value="datasets/demos",
                              description="dataset folder"),
        DeclareLaunchArgument("teleop", default_value="none",
                              description="none (scripted expert) or joy (joystick teleop)"),
        Node(package="robot_imitation", executable="mujoco_bridge", name="mujoco_bridge",
             output="screen",
             parameters=[PathJoinSubstitution([config, "bridge.yaml"]), {"task": task}]),
        Node(package="robot_imitation", executable="scripted_expert", name="scripted_expert",
             output="screen", condition=IfCondition(use_expert),
             parameters=[PathJoinSubstitution([config, "expert.yaml"]),
                         {"task": task, "trigger": "timer", "use_sim_time": True}]),
        Node(package="joy", executable="game_controller_node", name="joy",
             condition=IfCondition(use_joy)),
        Node(package="robot_imitation", executable="joy_teleop", name="joy_teleop",
             output="screen", condition=IfCondition(use_joy),
             parameters=[PathJoinSubstitution([config, "teleop.yaml"]),
                         {"task": task, "use_sim_time": True}]),
        Node(package="robot_imitation", executable="episode_recorder", name="episode_recorder",
             output="screen",
             parameters=[PathJoinSubstitution([config, "recorder.yaml"]),
                         {"dataset": LaunchConfiguration("dataset"), "spec": task,
                          "task": task, "use_sim_time": True}]),
    ])
