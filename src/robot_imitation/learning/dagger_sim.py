"""The DAgger study of ``bench/dagger_curve.py``: BC against DAgger and HG-DAgger in the
gymnasium world, success against expert labels.

The DAgger curves are ``algorithms.dagger.run``, the very code ``robot-imitation dagger`` and
the pipeline run through ROS, here in ``rollouts.gym.GymLearningWorld`` (no processes, no DDS:
the curves over several seeds take minutes). The BC curve trains on growing prefixes of the
same expert demonstrations with the same trainer and evaluates in the same world.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..algorithms.dagger import DaggerConfig, check_config, demo_seeds, eval_seeds, run
from ..spec import Spec

VARIANTS = {"mixture": "dagger", "gated": "hg_dagger"}  # variant: its key in the results


@dataclass
class SimDaggerConfig:
    task: str = "push"
    seed: int = 0
    bc_demos: list = field(default_factory=lambda: [10, 20, 40, 80])  # BC curve points
    dagger_start: int = 10            # expert demonstrations before the first DAgger iteration
    iterations: int = 5
    episodes_per_iteration: int = 10
    beta0: float = 0.7                # mixture: beta_i = beta0 * decay**(i-1)
    decay: float = 0.85
    variants: list = field(default_factory=lambda: ["mixture"])
    # gated: the scripted supervisor's gate (sim.supervisor.InterventionGate)
    stall_steps: int = 10             # ticks the end effector may stay within stall_distance
    stall_distance: float = 0.01      # m
    hold: int = 15                    # ticks the expert keeps control per intervention
    regress: float = 0.02             # m the object may lose on its best gap to the goal
    patience: int = 30                # ticks without 1 cm of progress before taking over
    eval_episodes: int = 20
    # every label trains (no validation split: the last weights are evaluated in closed loop)
    train: dict = field(default_factory=lambda: {"steps": 3000, "eval_every": 0,
                                                  "eval_episodes": 0, "device": "cpu",
                                                  "val_fraction": 0.0})

    def dagger(self, variant: str, bc_episodes: int | None = None) -> DaggerConfig:
        """The ``DaggerConfig`` of one curve."""
        return DaggerConfig(
            task=self.task, bc_episodes=bc_episodes or self.dagger_start,
            iterations=self.iterations, episodes_per_iteration=self.episodes_per_iteration,
            variant=variant, schedule="exponential", beta0=self.beta0, decay=self.decay,
            supervisor={"stall_steps": self.stall_steps, "stall_distance": self.stall_distance,
                        "hold": self.hold, "regress": self.regress, "patience": self.patience}
            if variant == "gated" else {},
            eval_episodes=self.eval_episodes, warm_start=False, seed=self.seed,
            train=dict(self.train))


def _world(cfg: SimDaggerConfig):
    from ..rollouts.gym import GymLearningWorld

    return GymLearningWorld(cfg.task, Spec.for_task(cfg.task), cfg.seed)


def expert_success(cfg: SimDaggerConfig) -> float:
    world = _world(cfg)
    try:
        return world.evaluate(eval_seeds(cfg.dagger("mixture")), "expert")["success_rate"]
    finally:
        world.close()


def bc_and_dagger(cfg: SimDaggerConfig, out, log=print) -> dict:
    """The BC curve (success against expert labels, more demonstrations each point) and the
    DAgger curves (from ``dagger_start`` demonstrations, ``iterations`` rounds) for one seed."""
    from ..learning.trainer import train

    out = Path(out)
    rows = {"bc": []}
    base = cfg.dagger("mixture", max(cfg.bc_demos))
    tcfg, spec = check_config(base, through="gym")
    world = _world(cfg)
    try:
        demos, _ = world.demonstrations(demo_seeds(base))
        for n in cfg.bc_demos:
            data = world.dataset([(demos[:n], None)], spec, tcfg)
            world.deploy(train(data, out / f"bc_{n}", tcfg, log=lambda *a, **k: None)["last"])
            row = {"demos": n, "labels": int(sum(len(e) for e in demos[:n])),
                   "success": world.evaluate(eval_seeds(base), "policy")["success_rate"]}
            rows["bc"].append(row)
            log(f"[seed {cfg.seed}] BC {n} demos, {row['labels']} labels: {row['success']:.2f}")
    finally:
        world.close()
    for variant in cfg.variants:
        if variant not in VARIANTS:
            raise ValueError(f"DAgger variant must be one of {list(VARIANTS)}, not {variant!r}")
        dcfg = cfg.dagger(variant)
        tcfg, spec = check_config(dcfg, through="gym")
        world = _world(cfg)
        try:
            # the benchmark's own working folders: a re-run replaces them
            result = run(world, dcfg, tcfg, spec, out / VARIANTS[variant],
                         log=lambda m: log(f"[seed {cfg.seed}] {m}"), overwrite=True)
        finally:
            world.close()
        rows[VARIANTS[variant]] = [
            {"iteration": r["iteration"], "beta": r["beta"], "labels": r["labels"],
             "success": r["success_rate"], "expert_share": r["expert_share"]}
            for r in result["iterations"]]
    return rows


def labels_to_reach(curve: list, goal: float) -> int | None:
    """The fewest labels at which ``curve`` (rows with labels, success) reaches ``goal``."""
    hits = [r["labels"] for r in curve if r["success"] >= goal]
    return min(hits) if hits else None
