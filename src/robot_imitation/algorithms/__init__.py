"""Learning algorithms, each written once over a world (``rollouts``): the gymnasium task in
this process (``rollouts.gym.GymWorld``) or the ROS graph (``rollouts.ros.RosWorld``).

- ``dagger``: DAgger (beta-mixture rollouts, every visited state labelled by the expert) and
  HG-DAgger (the learner drives, a gate hands control to the expert, only the expert's steps
  are labelled), on top of behaviour cloning (the trainer).

A world offers: ``demonstrations(seeds)`` (the expert drives, every step labelled),
``deploy(checkpoint)``, ``collect(seeds, driver)`` (a ``Mixture`` or ``Gated`` driver, labelled
by the expert), ``evaluate(seeds, who)`` (``"policy"`` or ``"expert"``), ``dataset(parts)``
(what the trainer fits) and ``close()``. Another algorithm (adversarial imitation,
meta-imitation) is written against that interface and runs in both worlds; there is no
registry of algorithms yet: the command line's ``dagger``/``pipeline`` commands and the DAgger
node are DAgger's own, and the ROS world takes its rig's settings from ``DaggerConfig``.
"""
