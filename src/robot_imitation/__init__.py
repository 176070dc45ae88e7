"""robot_imitation: imitation learning on robots with ROS 2.

Plain cores (``sim``, ``bridge``, ``observation``) hold the logic and work without a ROS graph;
``nodes`` holds the thin ROS 2 adapters around them.

Map:
  ``sim``, ``bridge``, ``observation``, ``spec``   simulation, controller bridge, observations
  ``recording``, ``data``                           bags and datasets
  ``policies``    policy families by type name: ``base.Policy`` (loss, act, reset, build),
                  ``config.PolicyConfig`` (the input/output layout), ``registry``
                  (``register_policy``, ``policy_class``; other packages add families through
                  the entry-point group ``robot_imitation.policies``), ``mlp/`` (built in)
  ``learning``    ``config.TrainConfig`` (training settings, declared once), trainer,
                  checkpoints (``policy.json`` stores the type), closed-loop evaluation
  ``deploy``      inference backends (each says which policies it runs), the policy controller
  ``nodes``, ``cli``, ``settings``, ``launcher``    ROS nodes, command line, settings' limits

Adding a policy family: a ``Policy`` subclass with its ``PolicyConfig`` subclass, in a folder
``policies/<name>/`` registered with ``@register_policy("<name>")`` (and listed in
``policies.registry.BUILTIN``), or in another package with an entry point
``<name> = "package.module:Class"`` in the group ``robot_imitation.policies``.

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
