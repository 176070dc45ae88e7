"""robot_imitation: imitation learning on robots with ROS 2.

Plain cores (``sim``, ``bridge``, ``observation``) hold the logic and work without a ROS graph;
``nodes`` holds the thin ROS 2 adapters around them.

Importing the package registers the gymnasium environments ``robot_imitation/Reach-v0`` and
``robot_imitation/Push-v0`` (nothing heavy is imported until one is made).
"""

__version__ = "0.1.0"

ENV_IDS = {"reach": "robot_imitation/Reach-v0", "push": "robot_imitation/Push-v0"}


def register_envs() -> None:
    import gymnasium as gym

    for task, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="robot_imitation.sim.env:ImitationEnv",
                         kwargs={"task": task})


register_envs()
