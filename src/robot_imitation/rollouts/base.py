"""What a rollout gives, and the drivers that choose the executed action each tick."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..learning.outcomes import summarize, wilson_interval  # noqa: F401 (the rollouts' summary)

ROLLOUT_BACKEND = "eager"  # the policy's inference backend in every world (named, not measured)
EVAL_SEED = 500_000        # evaluation episodes: EVAL_SEED, EVAL_SEED + 1, ...


@dataclass
class EpisodeResult:
    """One episode: its seed, outcome, length in control ticks and final reward; with
    ``keep_commands``, the command executed at each tick (ticks, action_dim)."""

    seed: int
    success: bool
    ticks: int
    reward: float
    commands: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"seed": int(self.seed), "success": bool(self.success), "ticks": int(self.ticks),
                "reward": float(self.reward)}


class ExpertDriver:
    """The task's scripted expert drives (through the action filter it applies itself, as in
    the expert node)."""

    def __init__(self, expert):
        self.expert = expert

    def reset(self, seed: int) -> None:
        self.expert.reset()

    def act(self, obs: dict, sim_obs: dict) -> np.ndarray:
        return np.asarray(self.expert(sim_obs), dtype=float)


class MuxedDriver:
    """What the command mux forwards of ``driver``'s actions: each through the mux's action
    filter (``deploy.limits.CommandLimiter``, reset with each episode)."""

    def __init__(self, driver, limiter):
        self.driver, self.limiter = driver, limiter

    def reset(self, seed: int) -> None:
        self.driver.reset(seed)
        self.limiter.reset()

    def act(self, obs: dict, sim_obs: dict) -> np.ndarray | None:
        action = self.driver.act(obs, sim_obs)
        return None if action is None else self.limiter(action, obs)


class PolicyDriver:
    """A policy drives through a ``PolicyController``: the policy node's tick (chunking, the
    action filter with the limits the checkpoint carries, non-finite checks)."""

    def __init__(self, controller):
        self.controller = controller

    def reset(self, seed: int) -> None:
        self.controller.reset()

    def act(self, obs: dict, sim_obs: dict) -> np.ndarray | None:
        result = self.controller.tick(obs)
        return result.action
