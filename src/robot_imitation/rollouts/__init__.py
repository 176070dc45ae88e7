"""Rollouts: run episodes from given seeds with a given driver, in one of two worlds.

- ``base``: what a rollout gives (``EpisodeResult``, ``summarize``) and the drivers (who picks
  the executed action each tick): ``ExpertDriver``, ``PolicyDriver`` (a ``PolicyController``:
  the policy node's own control logic, action limits included).
- ``gym``: ``GymWorld``, the gymnasium task in this process; observations are built exactly as
  the policy node assembles them from the bridge's messages.
- The ROS world (bridge in lockstep, expert, mux, supervisor, policy node, recorder) is
  ``robot_imitation.dagger.RosRig``; with exact lockstep pairing both worlds give the same
  episodes for the same policy and seeds.
"""
from .base import EpisodeResult, ExpertDriver, PolicyDriver, summarize, wilson_interval

__all__ = ["EpisodeResult", "ExpertDriver", "PolicyDriver", "summarize", "wilson_interval"]
