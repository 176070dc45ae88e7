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
from ..sim.supervisor import InterventionGate, stuck
from ..spec import Spec
from .evaluation import evaluate_policy, observation_tensors
from .trainer import TrainConfig
from .trainer import train as train_policy


def _policy_action(policy, obs: dict, spec: Spec) -> np.ndarray:
    """The first action of ``policy``'s chunk for one observation."""
    with torch.no_grad():
        return policy.act(observation_tensors(obs, spec, "cpu"))[0, 0].double().numpy()


def _labelled(name: str, seen: dict, labels: list, spec: Spec, seed: int, success) -> Episode:
    """An ``Episode`` of visited observations (lists per key) and the expert's labels."""
    return Episode(name=name, obs={k: np.stack(v).astype(np.float32) for k, v in seen.items()},
                   actions=np.stack(labels).astype(np.float32),
                   t=np.arange(len(labels)) / spec.control_rate, source="gymnasium",
                   success=success, seed=seed)


def rollout(env, expert, spec: Spec, seed: int, policy=None, beta: float = 1.0,
            rng: np.random.Generator | None = None, stall_steps: int = 0,
            stall_distance: float = 0.01) -> Episode:
    """One episode from ``seed``: each step labelled by ``expert``; the executed action is the
    expert's with probability ``beta`` (per step), else ``policy``'s (first of its chunk).

    ``stall_steps`` > 0 ends an episode in which the policy acts once the end effector has
    moved less than ``stall_distance`` (m) over that many steps, as an operator resets a robot
    that got stuck: the states of a stall repeat each other, and labelling them again and
    again spends the expert's labels on nothing new.
    """
    if spec.image_observations:
        raise ValueError("rollout() handles low-dimensional specs only")
    obs, _ = env.reset(seed=seed)
    keys = [f.key for f in spec.observations]
    seen = {k: [] for k in keys}
    labels = []
    rng = rng or np.random.default_rng(seed)
    watch = stall_steps > 0 and policy is not None and beta < 1.0
    ee_path = []
    stalled = False
    while True:
        label = np.asarray(expert(obs), dtype=float)
        for k in keys:
            seen[k].append(np.asarray(obs[k], dtype=float))
        labels.append(label)
        action = label
        if policy is not None and rng.random() >= beta:
            action = _policy_action(policy, obs, spec)
        obs, _, terminated, truncated, info = env.step(
            np.clip(action, env.action_space.low, env.action_space.high))
        if terminated or truncated:
            break
        if watch:
            ee_path.append(np.asarray(obs["ee_pose"][:3], dtype=float))
            if stuck(ee_path, stall_steps, stall_distance):
                stalled = True
                break
    return _labelled(f"seed_{seed}", seen, labels, spec, seed,
                     bool(info["is_success"]) and not stalled)


def gated_rollout(env, expert, spec: Spec, seed: int, policy, gate: InterventionGate
                  ) -> tuple[list, bool, int]:
    """One HG-DAgger episode: the policy drives, ``gate`` hands control to the expert at
    times, and only the states the expert drove are labelled (as in a run with a person).

    Returns (one ``Episode`` per intervention, success, ticks run).
    """
    if spec.image_observations:
        raise ValueError("gated_rollout() handles low-dimensional specs only")
    obs, _ = env.reset(seed=seed)
    gate.reset()
    keys = [f.key for f in spec.observations]
    segments, current, ticks = [], None, 0
    while True:
        if gate.expert_drives(obs):
            action = np.asarray(expert(obs), dtype=float)
            if current is None:
                current = ({k: [] for k in keys}, [])
                segments.append(current)
            for k in keys:
                current[0][k].append(np.asarray(obs[k], dtype=float))
            current[1].append(action)
        else:
            current = None
            action = _policy_action(policy, obs, spec)
        obs, _, terminated, truncated, info = env.step(
            np.clip(action, env.action_space.low, env.action_space.high))
        ticks += 1
        if terminated or truncated:
            break
    episodes = [_labelled(f"seed_{seed}_intervention_{j}", seen, labels, spec, seed, None)
                for j, (seen, labels) in enumerate(segments)]
    return episodes, bool(info["is_success"]), ticks


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
    beta0: float = 0.7                # beta_i = beta0 * decay**(i-1)
    decay: float = 0.85
    stall_steps: int = 10             # end learner episodes stuck this many steps (0: never)
    stall_distance: float = 0.01      # m of end-effector motion that counts as stuck
    # "mixture": DAgger, beta-mixture rollouts, every visited state labelled; "gated":
    # HG-DAgger, the policy drives, a scripted gate hands control to the expert when the robot
    # is stuck or pushes backwards, only the expert-driven states are labelled
    variants: list = field(default_factory=lambda: ["mixture"])
    hold: int = 15                    # gated: ticks the expert keeps control per intervention
    regress: float = 0.02             # gated: m the object may lose on its best gap to the goal
    patience: int = 30                # gated: ticks without 1 cm of progress before taking over
    eval_episodes: int = 20
    eval_seed: int = 500_000
    # every label trains (no validation split: the last weights are evaluated in closed loop)
    train: dict = field(default_factory=lambda: {"steps": 3000, "eval_every": 0,
                                                  "eval_episodes": 0, "device": "cpu",
                                                  "val_fraction": 0.0})


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
    rows = {"bc": []}
    fitted = {}
    for n in cfg.bc_demos:
        fitted[n] = policy = fit(demos[:n], spec, out / f"bc_{n}", tcfg)
        row = {"demos": n, "labels": int(sum(len(e) for e in demos[:n])),
               "success": _score(policy, spec, cfg)}
        rows["bc"].append(row)
        log(f"[seed {cfg.seed}] BC {n} demos, {row['labels']} labels: {row['success']:.2f}")
    start = list(demos[:cfg.dagger_start])
    first = fitted.get(cfg.dagger_start) or fit(start, spec, out / f"bc_{cfg.dagger_start}", tcfg)
    bc_row = next((r for r in rows["bc"] if r["demos"] == cfg.dagger_start), None)
    first_row = {"iteration": 0, "labels": int(sum(len(e) for e in start)),
                 "success": bc_row["success"] if bc_row else _score(first, spec, cfg)}
    for variant in cfg.variants:
        if variant not in VARIANTS:
            raise ValueError(f"DAgger variant must be one of {list(VARIANTS)}, not {variant!r}")
        rows[VARIANTS[variant]] = _dagger_curve(cfg, variant, env, expert, spec, tcfg, out,
                                                list(start), first, dict(first_row), base, log)
    return rows


VARIANTS = {"mixture": "dagger", "gated": "hg_dagger"}  # variant: its key in the results


def _dagger_curve(cfg, variant, env, expert, spec, tcfg, out, data, policy, first_row, base,
                  log) -> list:
    rng = np.random.default_rng(cfg.seed)
    gate = InterventionGate(cfg.stall_steps or 10, cfg.stall_distance, cfg.regress, cfg.hold,
                            cfg.patience)
    name = "DAgger" if variant == "mixture" else "HG-DAgger"
    curve = [first_row]
    for i in range(1, cfg.iterations + 1):
        beta, extra = cfg.beta0 * cfg.decay ** (i - 1), {}
        if variant == "mixture":
            data += [rollout(env, expert, spec, base + 100_000 * i + k, policy, beta, rng,
                             cfg.stall_steps, cfg.stall_distance)
                     for k in range(cfg.episodes_per_iteration)]
        else:
            beta, wins, ticks = None, 0, 0
            for k in range(cfg.episodes_per_iteration):
                segments, ok, n = gated_rollout(env, expert, spec, base + 100_000 * i + k,
                                                policy, gate)
                data += segments
                wins, ticks = wins + ok, ticks + n
            extra = {"rollout_success": wins / cfg.episodes_per_iteration, "ticks": ticks}
        policy = fit(data, spec, out / f"{VARIANTS[variant]}_{i}", tcfg)
        row = {"iteration": i, "beta": beta, "labels": int(sum(len(e) for e in data)),
               "success": _score(policy, spec, cfg), **extra}
        curve.append(row)
        log(f"[seed {cfg.seed}] {name} {i}" + (f" (beta {beta:.3f})" if beta is not None else "")
            + f", {row['labels']} labels: {row['success']:.2f}")
    return curve


def labels_to_reach(curve: list, goal: float) -> int | None:
    """The fewest labels at which ``curve`` (rows with labels, success) reaches ``goal``."""
    hits = [r["labels"] for r in curve if r["success"] >= goal]
    return min(hits) if hits else None
