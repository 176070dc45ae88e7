"""robot_imitation: imitation learning on robots with ROS 2.

Layers (each imports only the ones above it; none but the ROS layer imports rclpy):

  contracts   ``spec`` (topics, fields, rate, normalization: recorder to policy node),
              ``observation`` (messages -> observation, by stamp), ``pairing`` (how an answer
              names the state it answers), ``settings`` (limits and descriptions of settings,
              stated once on dataclass fields), ``paths``
  cores       ``sim`` (TaskSim, experts, the gymnasium environments), ``bridge`` (BridgeCore:
              controller behaviour; ``stepper``: the lockstep protocol), ``recording`` and
              ``data`` (bags, datasets), ``policies`` (families by type name: ``base.Policy``,
              ``config.PolicyConfig``, ``registry``, ``mlp/``, ``act/``,
              ``diffusion/``), ``learning`` (``TrainConfig``,
              trainer, checkpoints, evaluation, outcomes), ``deploy`` (limits, backends, the
              policy controller, the mux core), ``teleop``
  rollouts    episodes from given seeds with a driver, in a world: ``rollouts.gym`` (the
              gymnasium task, observed and commanded as the policy node does) and
              ``rollouts.ros`` (the ROS graph's processes)
  algorithms  learning algorithms written once over a world: ``algorithms.dagger`` (DAgger,
              HG-DAgger); ``learning.dagger_sim`` is its benchmark study
  ROS layer   ``nodes`` (thin ROS 2 nodes over the cores; ``nodes.common``: parameters, QoS,
              executors, signals), ``ros`` (``graph``: private ROS graphs; ``graphs``: every
              process graph declared once; ``launcher``: processes; ``pipelines``: recording),
              ``dagger`` (DAgger through ROS), ``cli``, ``report``

Adding a policy family: a ``Policy`` subclass with its ``PolicyConfig`` subclass, in a folder
``policies/<name>/`` registered with ``@register_policy("<name>")`` (and listed in
``policies.registry.BUILTIN``), or in another package with an entry point
``<name> = "package.module:Class"`` in the group ``robot_imitation.policies``. Adding a
learning algorithm: a module of ``algorithms`` over the world interface (``algorithms``).

Importing the package registers the gymnasium environments ``robot_imitation/Reach-v0``,
``robot_imitation/Push-v0`` and ``robot_imitation/PushObstacle-v0`` (nothing heavy is imported
until one is made).
"""

__version__ = "0.1.0"

ENV_IDS = {"reach": "robot_imitation/Reach-v0", "push": "robot_imitation/Push-v0",
           "push_obstacle": "robot_imitation/PushObstacle-v0"}


def register_envs() -> None:
    import gymnasium as gym

    for task, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="robot_imitation.sim.env:ImitationEnv",
                         kwargs={"task": task})


register_envs()
