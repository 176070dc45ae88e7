"""Simulation in the loop: the MuJoCo bridge and the policy node running a checkpoint.

    ros2 launch robot_imitation sim_policy.launch.py checkpoint:=runs/train/run_X/best_val task:=push
    ros2 run robot_imitation episode_runner --ros-args -p episodes:=20

mode:=lockstep (the default) runs as fast as the machine allows, deterministically; the policy
node answers every state (trigger state) on simulated time. mode:=realtime paces the physics by
the wall clock and the policy node commands on a timer at the control rate.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    lockstep = PythonExpression(["'", LaunchConfiguration("mode"), "' == 'lockstep'"])
    policy_params = [PathJoinSubstitution([config, "policy.yaml"]),
                     {"checkpoint": LaunchConfiguration("checkpoint"), "use_sim_time": True}]
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint folder to run"),
        DeclareLaunchArgument("task", default_value="push", description="task to simulate"),
        DeclareLaunchArgument("mode", default_value="lockstep",
                              description="lockstep or realtime"),
        Node(package="robot_imitation", executable="mujoco_bridge", name="mujoco_bridge",
             output="screen",
             parameters=[PathJoinSubstitution([config, "bridge.yaml"]),
                         {"task": LaunchConfiguration("task"),
                          "mode": LaunchConfiguration("mode")}]),
        Node(package="robot_imitation", executable="policy_node", name="policy_node",
             output="screen", condition=IfCondition(lockstep),
             parameters=policy_params + [{"trigger": "state", "max_age_periods": 0.0}]),
        Node(package="robot_imitation", executable="policy_node", name="policy_node",
             output="screen", condition=UnlessCondition(lockstep),
             parameters=policy_params + [{"trigger": "timer"}]),
    ])
