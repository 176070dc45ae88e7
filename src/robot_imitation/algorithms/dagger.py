"""DAgger and HG-DAgger, written once over a world (``rollouts.gym.GymWorld``: the gymnasium
task in this process; ``rollouts.ros.RosWorld``: the ROS graph of bridge, expert, mux,
supervisor, policy node and recorder). ``robot-imitation dagger``/``pipeline`` and the DAgger
node run it through ROS, ``bench/dagger_curve.py`` in the gymnasium world: the same code.

Iteration 0 is behaviour cloning on ``bc_episodes`` expert demonstrations. Iteration i (1..K)
collects ``episodes_per_iteration`` episodes with the learner in the loop, labelled by the
expert, aggregates all data so far, retrains (optionally warm-started from the last weights),
deploys the new policy and evaluates it on fixed seeds. Variants:

- ``gated`` (HG-DAgger, the default): the policy drives, a gate standing in for the person
  watching (``sim.supervisor.InterventionGate``, the ``scripted_supervisor`` node through ROS)
  hands control to the expert when the robot is stuck, pushes the task backwards or makes no
  progress; only the steps the expert drove are labelled.
- ``mixture`` (DAgger): each step's executed action is the expert's with probability
  ``beta_i`` (a ``BetaSchedule``), drawn per step or per episode; every visited state is
  labelled.

Seeds: a run of seed S records its demonstrations from seed S * SEED_STRIDE and iteration i's
episodes from S * SEED_STRIDE + DATA_SEED * i; every run evaluates on EVAL_SEED, EVAL_SEED + 1,
... (the same episodes for every run and iteration). The settings' limits keep these ranges
apart (MAX_PART, MAX_ITERATIONS, MAX_EVAL_EPISODES).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..paths import prepare_out, write_text_whole
from ..rollouts.base import EVAL_SEED
from ..sim.supervisor import InterventionGate
from ..settings import Limits, SettingError, check_fields, setting

SEED_STRIDE = 1_000_000  # a run's demonstration and data seeds start at seed * SEED_STRIDE
DATA_SEED = 10_000       # iteration i's episodes: seed * SEED_STRIDE + DATA_SEED * i + k

# The layout keeps a run's seeds apart (and never changes a valid run's seeds): the
# demonstrations and each iteration's episodes take DATA_SEED seeds at most; seed 0's last
# iteration ends before EVAL_SEED; the evaluation episodes end before seed 1's run.
MAX_PART = DATA_SEED
MAX_ITERATIONS = EVAL_SEED // DATA_SEED - 1
MAX_EVAL_EPISODES = SEED_STRIDE - EVAL_SEED

VARIANTS = ("gated", "mixture")
SCHEDULES = ("constant", "linear", "exponential")
MIXTURE_PER = ("step", "episode")

_NON_NEGATIVE = Limits(int, low=0)
_SHARE = Limits(float, low=0.0, high=1.0)
#: the limits of the scripted supervisor's settings (``InterventionGate`` fields)
SUPERVISOR_LIMITS = {f.name: f.metadata["limits"] for f in fields(InterventionGate)}


@dataclass
class DaggerConfig:
    """A DAgger run's settings. Each field states its limits (``settings.Limits``); an instance
    outside them is never made (``SettingError``), and the command line's options take the
    same limits from here. ``train`` (``TrainConfig`` settings) is checked by ``check_config``
    when a run starts, before anything else."""

    task: str = setting("push", Limits(str), help="built-in task (config/tasks name or path)")
    spec: str = setting("", Limits(str), help="observation/action spec (config/specs name or "
                        "path); empty: the task's")
    bc_episodes: int = setting(20, Limits(int, low=1, high=MAX_PART, what=(
        f"an integer from 1 to {MAX_PART} (more would take iteration 1's seeds)")),
        help="expert demonstrations for BC (iteration 0)")
    iterations: int = setting(3, Limits(int, low=0, high=MAX_ITERATIONS, what=(
        f"an integer from 0 to {MAX_ITERATIONS} (iteration {MAX_ITERATIONS + 1}'s episodes "
        "would take the evaluation seeds)")), help="DAgger iterations after BC")
    episodes_per_iteration: int = setting(10, Limits(int, low=1, high=MAX_PART, what=(
        f"an integer from 1 to {MAX_PART} (more would take the next iteration's seeds)")),
        help="episodes recorded (with the expert's labels) per DAgger iteration")
    variant: str = setting("gated", Limits(str, choices=VARIANTS),
                           help="gated: HG-DAgger (a scripted supervisor hands control to the "
                           "expert when the policy gets into trouble; only those steps are "
                           "labelled); mixture: beta-mixture DAgger (every visited state "
                           "labelled)")
    supervisor: dict = setting(limits=Limits(dict), default_factory=dict,
                               help="gated: settings of the scripted supervisor "
                               "(sim.supervisor.InterventionGate fields, limits in "
                               "SUPERVISOR_LIMITS); unset ones keep the gate's defaults")
    schedule: str = setting("exponential", Limits(str, choices=SCHEDULES),
                            help="mixture: expert probability beta over the iterations")
    beta0: float = setting(0.7, _SHARE, help="mixture: beta of the first DAgger iteration")
    decay: float = setting(0.85, _SHARE, help="mixture, exponential schedule: beta factor per "
                           "iteration")
    mixture_per: str = setting("step", Limits(str, choices=MIXTURE_PER),
                               help="mixture: draw expert or policy per step or per episode")
    eval_episodes: int = setting(20, Limits(int, low=1, high=MAX_EVAL_EPISODES, what=(
        f"an integer from 1 to {MAX_EVAL_EPISODES} (more would take seed 1's demonstration "
        "seeds)")), help="closed-loop evaluation episodes after each iteration (fixed seeds)")
    label_budget: int = setting(0, _NON_NEGATIVE, help="stop after the first iteration "
                                "trained on this many expert labels or more (0: no limit)")
    warm_start: bool = setting(True, Limits(bool), help="retrain from the previous "
                               "iteration's policy (else from scratch)")
    seed: int = setting(0, Limits(int, low=0, high=2**32 - 1),  # as TrainConfig's
                        help="random seed (demonstrations, training, mixture)")
    train: dict = setting(limits=Limits(dict), default_factory=lambda: {
        "steps": 3000, "eval_every": 0, "eval_episodes": 0, "device": "auto"},
        help="the training settings of each iteration (TrainConfig fields); unset ones take "
        "TrainConfig's defaults")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """``SettingError`` naming the first setting outside its limits."""
        check_fields(self)
        unknown = sorted(set(self.supervisor) - set(SUPERVISOR_LIMITS))
        if unknown:
            raise SettingError(f"unknown supervisor settings {unknown} "
                               f"(known: {sorted(SUPERVISOR_LIMITS)})")
        for key, value in self.supervisor.items():
            SUPERVISOR_LIMITS[key].check(f"supervisor {key}", value)


def check_config(cfg: DaggerConfig, through: str = "ros"):
    """What a DAgger run needs before anything starts: its training settings, the task and
    the spec, and a spec the task can serve (``through`` its bridge, ``ros``, or its
    gymnasium version, ``gym``). Returns (TrainConfig, Spec); raises ``SettingError``,
    ``ModelError`` (task) or ``SpecError``, each naming the bad value."""
    from ..learning.evaluation import task_mismatch
    from ..learning.trainer import TrainConfig, resolve_device
    from ..sim.tasks import TaskConfig
    from ..spec import Spec, SpecError

    cfg.validate()  # also an instance changed since it was made
    try:
        tcfg = TrainConfig.from_dict({"seed": cfg.seed, "task": cfg.task, **cfg.train})
        resolve_device(tcfg.device)  # a device that is not there, before any recording
    except (SettingError, ValueError, RuntimeError) as exc:
        raise SettingError(f"train: {exc}") from None
    TaskConfig.load(cfg.task)
    spec = Spec.load(cfg.spec) if cfg.spec else Spec.for_task(cfg.task)
    problem = task_mismatch(spec, cfg.task, through=through)
    if problem:
        raise SpecError(f"spec {spec.name} {problem}")
    return tcfg, spec


def run_inputs(cfg: DaggerConfig) -> list:
    """The files a run of ``cfg`` reads that a person named by path (its task, its spec)."""
    return [Path(name) for name in (cfg.task, cfg.spec) if name and Path(name).is_file()]


def demo_seeds(cfg: DaggerConfig, n: int | None = None) -> range:
    """The seeds of the run's expert demonstrations."""
    base = cfg.seed * SEED_STRIDE
    return range(base, base + (cfg.bc_episodes if n is None else n))


def data_seeds(cfg: DaggerConfig, iteration: int) -> range:
    """The seeds of iteration ``iteration``'s episodes (1-based)."""
    base = cfg.seed * SEED_STRIDE + DATA_SEED * iteration
    return range(base, base + cfg.episodes_per_iteration)


def eval_seeds(cfg: DaggerConfig) -> range:
    return range(EVAL_SEED, EVAL_SEED + cfg.eval_episodes)


@dataclass(frozen=True)
class BetaSchedule:
    """The expert's probability at DAgger iteration i (1-based; iteration 0 is the
    demonstrations): ``constant`` beta0; ``linear`` from beta0 to 0 over ``iterations``;
    ``exponential`` beta0 * decay ** (i - 1)."""

    kind: str = "exponential"
    beta0: float = 0.7
    decay: float = 0.85
    iterations: int = 1

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise SettingError(f"beta schedule must be one of {', '.join(SCHEDULES)}, "
                               f"not {self.kind!r}")
        for name in ("beta0", "decay"):  # (the limits of DaggerConfig's settings)
            _SHARE.check(name, getattr(self, name))
        _NON_NEGATIVE.check("iterations", self.iterations)

    def __call__(self, iteration: int) -> float:
        if self.kind == "constant":
            return self.beta0
        if self.kind == "linear":
            return max(0.0, self.beta0 * (1.0 - (iteration - 1) / max(1, self.iterations)))
        return self.beta0 * self.decay ** (iteration - 1)


@dataclass(frozen=True)
class Mixture:
    """Driver: the expert's action with probability ``beta`` (drawn per ``step`` or per
    ``episode``), else the learner's; every visited state labelled."""

    beta: float
    per: str = "step"

    def __post_init__(self):
        _SHARE.check("beta", self.beta)
        Limits(str, choices=MIXTURE_PER).check("per", self.per)


@dataclass(frozen=True)
class Gated:
    """Driver: the learner, until the gate (``InterventionGate`` settings) hands control to
    the expert; only the expert's steps labelled."""

    supervisor: dict


def run(world, cfg: DaggerConfig, tcfg, spec, out, log=print, on_iteration=None,
        should_stop=None, overwrite: bool = False, abort=None) -> dict:
    """BC on expert demonstrations, then ``cfg.iterations`` iterations, in ``world``; returns
    (and writes to ``out``/dagger.json) the per-iteration results. ``tcfg``, ``spec``: from
    ``check_config``. ``on_iteration(row)``: called with each iteration's results once they are
    written. ``should_stop()``: asked after the demonstrations and after each iteration (never
    in the middle of one); when it answers true the run ends there, its results so far written
    with ``"stopped": true`` (and ``"stop_reason": "request"``); a run that ends at the label
    budget says ``"stop_reason": "label_budget"`` and ``label_budget`` (the budget, the labels
    trained on, BC's, whether exceeded). ``out`` must be empty or new (``RunFolderError``
    otherwise: an earlier run's data would be trained on with this run's), unless
    ``overwrite``, which clears it first. Ctrl-C (``KeyboardInterrupt``) is passed on once
    dagger.json holds the iterations done, with ``"interrupted": true`` and the iteration
    under way (``interrupted_iteration``; null between two). ``abort()``: asked while a policy
    trains (at its progress reports, and between its evaluation episodes): when it answers
    true the run ends there the same way (``TrainingStopped`` passed on; a node shutting down
    stops its training rather than leaving it running)."""
    out = prepare_out(out, overwrite, run_inputs(cfg))
    results = {"config": asdict(cfg), "world": world.kind, "iterations": []}
    under_way = {"iteration": 0}  # iteration 0: the demonstrations and BC
    from ..learning.trainer import TrainingStopped

    try:
        _iterate(world, cfg, tcfg, spec, out, results, under_way, log, on_iteration,
                 should_stop, abort)
    except (KeyboardInterrupt, TrainingStopped):  # the iterations done kept, marked unfinished
        results["interrupted"] = True
        results["interrupted_iteration"] = under_way["iteration"]
        _write_results(out, results)
        raise
    return results


def _write_results(out: Path, results: dict) -> None:
    """``out``/dagger.json, replaced whole (a temporary file renamed over it)."""
    write_text_whole(out / "dagger.json", json.dumps(results, indent=2) + "\n")


def _iterate(world, cfg: DaggerConfig, tcfg, spec, out: Path, results: dict, under_way: dict,
             log, on_iteration, should_stop, abort=None) -> None:
    """``run``'s demonstrations and iterations, into ``results`` (``under_way``: the number
    of the iteration under way, None between two)."""
    from ..learning.trainer import train

    gated = cfg.variant == "gated"
    t0 = time.monotonic()
    log(f"[dagger] simulation {world.describe()}")
    log(f"[dagger] recording {cfg.bc_episodes} expert demonstrations of {cfg.task}")
    parts = [world.demonstrations(demo_seeds(cfg))]

    def stopped() -> bool:
        if should_stop is None or not should_stop():
            return False
        results["stopped"] = True
        results["stop_reason"] = "request"
        _write_results(out, results)
        log(f"[dagger] stopped on request after {len(results['iterations'])} iteration(s)")
        return True

    if stopped():
        return

    def fit(i: int, init: str | None) -> tuple[dict, int]:
        data = world.dataset(parts, spec, tcfg)
        if data.summary:  # what each training used, skipped and dropped (also in its result)
            log(f"[dagger] training data of {'BC' if i == 0 else f'iteration {i}'}: "
                f"{data.describe()}")
        labels = int(sum(len(e) for e in data.episodes))
        c = replace(tcfg, init_from=init or "") if init else tcfg
        return train(data, out / f"train_{i}", c, log=lambda *a, **k: None,
                     stop=abort), labels

    res, labels = fit(0, None)
    ckpt = res["last"]
    world.deploy(ckpt)
    expert = world.evaluate(eval_seeds(cfg), "expert")
    results["expert"] = _row(expert)
    log(f"[dagger] expert: {_fmt(expert)}")
    schedule = BetaSchedule(cfg.schedule, cfg.beta0, cfg.decay, cfg.iterations)
    beta = share = None
    for i in range(cfg.iterations + 1):
        under_way["iteration"] = i
        if i > 0:
            if gated:
                driver = Gated(dict(cfg.supervisor))
            else:
                beta = schedule(i)
                driver = Mixture(beta, cfg.mixture_per)
            part, share = world.collect(data_seeds(cfg, i), driver)
            parts.append(part)
            res, labels = fit(i, ckpt if cfg.warm_start else None)
            ckpt = res["last"]
            world.deploy(ckpt)
        score = world.evaluate(eval_seeds(cfg), "policy")
        row = {"iteration": i, "variant": None if i == 0 else cfg.variant,
               "beta": beta, "expert_share": share, "labels": labels,
               "checkpoint": ckpt, "train_dir": str(out / f"train_{i}"), **_row(score),
               "per_episode": score.get("per_episode"),
               "latency": world.policy_stats(), "elapsed_s": round(time.monotonic() - t0, 1)}
        results["iterations"].append(row)
        under_way["iteration"] = None
        how = "" if i == 0 else (f"expert drove {share:.0%}, " if gated else
                                 f"beta {beta:.2f}, ")
        log(f"[dagger] {'BC' if i == 0 else f'{NAMES[cfg.variant]} {i}'} ({how}{labels} "
            f"expert labels): {_fmt(score)}")
        _write_results(out, results)
        if on_iteration is not None:
            on_iteration(row)
        if i == 0:
            bc_labels = labels
        if cfg.label_budget and labels >= cfg.label_budget:
            over = labels > cfg.label_budget
            # ("stopped" stays the request's: the DAgger node reads it as a cancelled run)
            results["stop_reason"] = "label_budget"
            results["label_budget"] = {"budget": cfg.label_budget, "labels": labels,
                                       "bc_labels": bc_labels, "exceeded": over}
            _write_results(out, results)
            log(f"[dagger] label budget {cfg.label_budget} {'exceeded' if over else 'reached'}: "
                f"{labels} labels trained on"
                + ((" (BC alone)" if i == 0 else f" (BC alone used {bc_labels})") if over
                   else ""))
            break
        if i < cfg.iterations and stopped():
            break


NAMES = {"gated": "HG-DAgger", "mixture": "DAgger"}


def _row(summary: dict) -> dict:
    return {"episodes": summary["episodes"], "successes": summary["successes"],
            "success_rate": summary["success_rate"], "ci95": summary["ci95"]}


def _fmt(s: dict) -> str:
    return (f"{s['successes']}/{s['episodes']} = {s['success_rate']:.0%} "
            f"(95% CI {s['ci95'][0]:.0%}-{s['ci95'][1]:.0%})")
