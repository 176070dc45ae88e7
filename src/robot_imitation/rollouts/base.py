"""What a rollout gives, and the drivers that choose the executed action each tick."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(results: list) -> dict:
    """Success count and rate (95% Wilson interval), mean length, and every episode's seed,
    success, ticks and final reward."""
    n = len(results)
    k = sum(bool(r.success) for r in results)
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0,
            "ci95": [lo, hi],
            "mean_length": float(np.mean([r.ticks for r in results])) if n else 0.0,
            "per_episode": [r.to_dict() for r in results]}


class ExpertDriver:
    """The task's scripted expert drives (its actions are not filtered: as the expert node)."""

    def __init__(self, expert):
        self.expert = expert

    def reset(self, seed: int) -> None:
        pass

    def act(self, obs: dict, sim_obs: dict) -> np.ndarray:
        return np.asarray(self.expert(sim_obs), dtype=float)


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
