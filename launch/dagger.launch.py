"""The processes of a DAgger run in simulation: bridge (lockstep), scripted expert labelling
every state on /expert/..., policy node on /policy/..., the command mux forwarding one of them,
and the recorder keeping the spec's topics, the labels and the executed source. With
``variant:=gated`` (HG-DAgger, the default) the scripted supervisor holds the mux's
intervention button when the policy gets into trouble; with ``variant:=mixture`` the mux draws
the expert with probability ``beta``.

    ros2 launch robot_imitation dagger.launch.py checkpoint:=runs/bc/best_val task:=push
    ros2 service call /episode_recorder/start std_srvs/srv/Trigger
    ros2 run robot_imitation episode_runner --ros-args -p episodes:=10
    robot-imitation train datasets/dagger --sources expert ...   # gated: the expert's steps

`robot-imitation dagger` runs the whole loop (record, aggregate, retrain, hot-reload, evaluate)
over these same nodes.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("robot_imitation"), "config"])
    task = LaunchConfiguration("task")
    gated = PythonExpression(["'", LaunchConfiguration("variant"), "' == 'gated'"])
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="the current policy"),
        DeclareLaunchArgument("task", default_value="push"),
        DeclareLaunchArgument("dataset", default_value="datasets/dagger",
                              description="where the DAgger episodes are recorded"),
        DeclareLaunchArgument("variant", default_value="gated", choices=["gated", "mixture"],
                              description="gated: HG-DAgger with the scripted supervisor; "
                                          "mixture: beta-mixture"),
        DeclareLaunchArgument("beta", default_value="0.5",
                              description="mixture: probability of the expert per step"),
        Node(package="robot_imitation", executable="mujoco_bridge", name="mujoco_bridge",
             output="screen",
             parameters=[PathJoinSubstitution([config, "bridge.yaml"]),
                         {"task": task, "mode": "lockstep", "cameras": [""]}]),
        Node(package="robot_imitation", executable="scripted_expert", name="scripted_expert",
             output="screen",
             parameters=[PathJoinSubstitution([config, "expert.yaml"]),
                         {"task": task, "trigger": "state",
                          "arm_controller": "expert/arm_controller",
                          "gripper_controller": "expert/gripper_controller"}]),
        Node(package="robot_imitation", executable="policy_node", name="policy_node",
             output="screen",
             parameters=[PathJoinSubstitution([config, "policy.yaml"]),
                         {"checkpoint": LaunchConfiguration("checkpoint"), "trigger": "state",
                          "use_sim_time": True, "max_age_periods": 0.0}],
             remappings=[("/arm_controller/commands", "/policy/arm_controller/commands"),
                         ("/gripper_controller/commands",
                          "/policy/gripper_controller/commands")]),
        Node(package="robot_imitation", executable="command_mux", name="command_mux",
             output="screen",
             parameters=[PathJoinSubstitution([config, "mux.yaml"]),
                         {"sync": True, "sources": ["expert", "policy"],
                          "mode": PythonExpression(["'intervention' if ", gated,
                                                    " else 'mixture'"]),
                          "beta": LaunchConfiguration("beta"), "joy_sync": True,
                          "intervention_source": "expert"}]),
        Node(package="robot_imitation", executable="scripted_supervisor",
             name="scripted_supervisor", output="screen", condition=IfCondition(gated),
             parameters=[PathJoinSubstitution([config, "supervisor.yaml"]), {"spec": task}]),
        Node(package="robot_imitation", executable="episode_recorder", name="episode_recorder",
             output="screen",
             parameters=[PathJoinSubstitution([config, "recorder.yaml"]),
                         {"dataset": LaunchConfiguration("dataset"), "spec": task, "task": task,
                          "use_sim_time": True, "auto_stop_on_done": True,
                          "topics": ["/expert/arm_controller/commands",
                                     "/expert/gripper_controller/commands",
                                     "/command_mux/source", "/joy"]}]),
    ])
