"""DAgger and BC in the gymnasium version of a built-in task: no ROS, for studies and benchmarks.

The same pieces as the ROS loop (``robot_imitation.dagger``): the task's scripted expert labels
every visited state, a beta-mixture of expert and learner chooses the executed action, the
spec's observation keys are the policy's inputs, and the library's trainer fits the policy. The
lockstep bridge steps exactly like the gymnasium task (tested), so what is learnt here is what
the ROS loop learns, minutes faster.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import Dataset, Episode, compute_stats, split_episodes
from ..spec import Spec
from .evaluation import evaluate_policy, observation_tensors
from .trainer import TrainConfig
from .trainer import train as train_policy


def rollout(env, expert, spec: Spec, seed: int, policy=None, beta: float = 1.0,
            rng: np.random.Generator | None = None) -> Episode:
    """One episode from ``seed``: each step labelled by ``expert``; the executed action is the
    expert's with probability ``beta`` (per step), else ``policy``'s (first of its chunk)."""
    if spec.image_observations:
        raise ValueError("rollout() handles low-dimensional specs only")
    obs, _ = env.reset(seed=seed)
    keys = [f.key for f in spec.observations]
    seen = {k: [] for k in keys}
    labels = []
    rng = rng or np.random.default_rng(seed)
    while True:
        label = np.asarray(expert(obs), dtype=float)
        for k in keys:
            seen[k].append(np.asarray(obs[k], dtype=float))
        labels.append(label)
        action = label
        if policy is not None and rng.random() >= beta:
            with torch.no_grad():
                action = policy.act(observation_tensors(obs, spec, "cpu"))[0, 0].double().numpy()
        obs, _, terminated, truncated, info = env.step(
            np.clip(action, env.action_space.low, env.action_space.high))
        if terminated or truncated:
            break
    n = len(labels)
    return Episode(name=f"seed_{seed}", obs={k: np.stack(v).astype(np.float32)
                                             for k, v in seen.items()},
                   actions=np.stack(labels).astype(np.float32),
                   t=np.arange(n) / spec.control_rate, source="gymnasium",
                   success=bool(info["is_success"]), seed=seed)


def episodes_dataset(episodes: list, spec: Spec, out, cfg: TrainConfig) -> Dataset:
    """A ``Dataset`` of in-memory ``episodes``: split by episode, statistics of the train split."""
    train_eps, val_eps = split_episodes(episodes, cfg.val_fraction, cfg.seed)
    return Dataset(path=Path(out), spec=spec, episodes=episodes, train=train_eps, val=val_eps,
                   stats=compute_stats(spec, train_eps))


def fit(episodes: list, spec: Spec, out, cfg: TrainConfig):
    """Train on ``episodes`` (expert labels); returns the trained ``Policy``."""
    from .checkpoint import load_checkpoint

    data = episodes_dataset(episodes, spec, out, cfg)
    result = train_policy(data, out, cfg, log=lambda *a, **k: None)
    policy, _ = load_checkpoint(result["last"], spec)
    return policy


@dataclass
class SimDaggerConfig:
    task: str = "push"
    seed: int = 0
    bc_demos: list = field(default_factory=lambda: [10, 20, 40, 80])  # BC curve points
    dagger_start: int = 10            # expert demonstrations before the first DAgger iteration
    iterations: int = 5
    episodes_per_iteration: int = 10
    beta0: float = 0.5                # beta_i = beta0 * decay**(i-1)
    decay: float = 0.5
    eval_episodes: int = 20
    eval_seed: int = 500_000
    train: dict = field(default_factory=lambda: {"steps": 3000, "eval_every": 0,
                                                  "eval_episodes": 0, "device": "cpu"})


def _score(policy, spec, cfg: SimDaggerConfig) -> float:
    return evaluate_policy(policy, spec, cfg.task, cfg.eval_episodes, cfg.eval_seed)["success_rate"]


def expert_success(cfg: SimDaggerConfig) -> float:
    from ..sim.env import ImitationEnv
    from ..sim.experts import make_expert

    env = ImitationEnv(cfg.task)
    expert = make_expert(env.sim)
    spec = Spec.load(cfg.task)
    ok = sum(rollout(env, expert, spec, cfg.eval_seed + i).success
             for i in range(cfg.eval_episodes))
    return ok / cfg.eval_episodes


def bc_and_dagger(cfg: SimDaggerConfig, out, log=print) -> dict:
    """The BC curve (success against expert labels, more demonstrations each point) and the
    DAgger curve (from ``dagger_start`` demonstrations, ``iterations`` rounds) for one seed."""
    from ..sim.env import ImitationEnv
    from ..sim.experts import make_expert

    out = Path(out)
    spec = Spec.load(cfg.task)
    env = ImitationEnv(cfg.task)
    expert = make_expert(env.sim)
    tcfg = TrainConfig.from_dict({"seed": cfg.seed, **cfg.train})
    base = 1_000_000 * (cfg.seed + 1)  # demonstration seeds differ per run seed
    demos = [rollout(env, expert, spec, base + i) for i in range(max(cfg.bc_demos))]
    rows = {"bc": [], "dagger": []}
    for n in cfg.bc_demos:
        policy = fit(demos[:n], spec, out / f"bc_{n}", tcfg)
        row = {"demos": n, "labels": int(sum(len(e) for e in demos[:n])),
               "success": _score(policy, spec, cfg)}
        rows["bc"].append(row)
        log(f"[seed {cfg.seed}] BC {n} demos, {row['labels']} labels: {row['success']:.2f}")
    data = list(demos[:cfg.dagger_start])
    policy = fit(data, spec, out / "dagger_0", tcfg)
    rng = np.random.default_rng(cfg.seed)
    rows["dagger"].append({"iteration": 0, "labels": int(sum(len(e) for e in data)),
                           "success": _score(policy, spec, cfg)})
    for i in range(1, cfg.iterations + 1):
        beta = cfg.beta0 * cfg.decay ** (i - 1)
        data += [rollout(env, expert, spec, base + 100_000 * i + k, policy, beta, rng)
                 for k in range(cfg.episodes_per_iteration)]
        policy = fit(data, spec, out / f"dagger_{i}", tcfg)
        row = {"iteration": i, "beta": beta, "labels": int(sum(len(e) for e in data)),
               "success": _score(policy, spec, cfg)}
        rows["dagger"].append(row)
        log(f"[seed {cfg.seed}] DAgger {i} (beta {beta:.3f}), {row['labels']} labels: "
            f"{row['success']:.2f}")
    return rows


def labels_to_reach(curve: list, goal: float) -> int | None:
    """The fewest labels at which ``curve`` (rows with labels, success) reaches ``goal``."""
    hits = [r["labels"] for r in curve if r["success"] >= goal]
    return min(hits) if hits else None
