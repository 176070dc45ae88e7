"""DAgger through ROS 2, and closed-loop evaluation of a checkpoint.

Processes (one group for the whole run, on a private ROS graph unless the caller joins its own:
``graph.SimGraph``): the bridge in lockstep, the scripted expert answering
every state on ``/expert/...``, the policy node on ``/policy/...``, the command mux (``sync``)
forwarding one of them to the robot, and the recorder, which keeps the spec's topics, the
expert's labels and the executed source (``/command_mux/source``) of each step. The ``gated``
variant adds the scripted supervisor, which holds the mux's intervention button (a
``sensor_msgs/Joy`` stamped like each state) as the person of an HG-DAgger run would.

Iteration i (1..K) records episodes with the policy in the loop, then aggregates all data so far
(the expert's demonstrations and every DAgger iteration), retrains (optionally warm-started),
hot-reloads the running policy node and evaluates on a fixed set of seeds. The recorded
observations are paired with the expert's labels (not the executed commands: the dataset is
read with ``label_spec``). Variants:

- ``gated`` (HG-DAgger, the default): the policy drives, the supervisor hands control to the
  expert when the robot is stuck, pushes the task backwards or makes no progress, and only the
  steps the expert drove are labelled (the dataset keeps the steps whose recorded executed
  source is ``expert``). Labels go where the learner fails, not where it is already right.
- ``mixture`` (DAgger): the mux draws the expert with probability ``beta_i`` and the expert
  labels every visited state.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .settings import Limits, SettingError, check_fields, setting

LABEL_PREFIX = "/expert"
EVAL_SEED = 500_000       # evaluation episodes use seeds EVAL_SEED, EVAL_SEED + 1, ...
DATA_SEED = 100_000       # DAgger iteration i records seeds DATA_SEED * i, DATA_SEED * i + 1, ...


def label_spec(spec, prefix: str = LABEL_PREFIX):
    """``spec`` with its actions read from the expert's label topics (``prefix`` + topic)."""
    from .spec import Spec

    data = spec.to_dict()
    for a in data["actions"]:
        a["topic"] = prefix + a["topic"]
    data["name"] = f"{spec.name}_labels"
    return Spec.from_dict(data)


def aggregate(parts: list, spec, val_fraction: float = 0.1, seed: int = 0,
              include_interrupted: bool = False):
    """One ``Dataset`` from several (folder, spec used to read it, sources to keep or None)
    parts, under ``spec``; its ``summary`` says what was used and what each part skipped
    (episode names prefixed with their folder's)."""
    from .data.dataset import (Dataset, build_dataset, build_summary, compute_stats,
                               split_episodes)

    episodes, skipped = [], {}
    for folder, read_spec, sources in parts:
        built = build_dataset(folder, spec=read_spec, val_fraction=0.0,
                              include_interrupted=include_interrupted)
        for reason, names in built.summary["skipped"].items():
            skipped.setdefault(reason, []).extend(f"{Path(folder).name}/{n}" for n in names)
        # with sources: the steps they drove (none, when the supervisor never took over)
        episodes += ([s for e in built.episodes for s in e.segments(sources)] if sources
                     else built.episodes)
    train, val = split_episodes(episodes, val_fraction, seed)
    return Dataset(path=Path(parts[0][0]), spec=spec, episodes=episodes, train=train, val=val,
                   stats=compute_stats(spec, train),
                   summary=build_summary(episodes, skipped, include_interrupted))


VARIANTS = ("gated", "mixture")
SCHEDULES = ("constant", "linear", "exponential")
MIXTURE_PER = ("step", "episode")
INTERVENTION_BUTTON = 5

_POSITIVE, _NON_NEGATIVE = Limits(int, low=1), Limits(int, low=0)
_SHARE = Limits(float, low=0.0, high=1.0)
#: the limits of the scripted supervisor's settings (``InterventionGate`` fields)
SUPERVISOR_LIMITS = {"stall_steps": _POSITIVE, "stall_distance": Limits(float, low=0.0),
                     "regress": Limits(float, low=0.0), "hold": _POSITIVE,
                     "patience": _NON_NEGATIVE, "progress": Limits(float, low=0.0)}


@dataclass
class DaggerConfig:
    """A DAgger run's settings. Each field states its limits (``settings.Limits``); an instance
    outside them is never made (``SettingError``), and the command line's options take the
    same limits from here. ``train`` (``TrainConfig`` settings) is checked by ``check_config``
    when a run starts, before anything else."""

    task: str = setting("push", Limits(str))
    spec: str = setting("", Limits(str))  # "" = the task's spec
    bc_episodes: int = setting(20, _POSITIVE)  # expert demonstrations (iteration 0: BC)
    iterations: int = setting(3, _NON_NEGATIVE)
    episodes_per_iteration: int = setting(10, _POSITIVE)
    # gated (HG-DAgger) | mixture (beta-mixture DAgger)
    variant: str = setting("gated", Limits(str, choices=VARIANTS))
    # gated: InterventionGate settings (SUPERVISOR_LIMITS)
    supervisor: dict = setting(limits=Limits(dict), default_factory=dict)
    schedule: str = setting("exponential", Limits(str, choices=SCHEDULES))  # mixture's beta
    beta0: float = setting(0.7, _SHARE)
    decay: float = setting(0.85, _SHARE)
    mixture_per: str = setting("step", Limits(str, choices=MIXTURE_PER))
    eval_episodes: int = setting(20, _POSITIVE)
    # stop once this many expert labels are used (0: no limit)
    label_budget: int = setting(0, _NON_NEGATIVE)
    warm_start: bool = setting(True, Limits(bool))
    seed: int = setting(0, Limits(int, low=0, high=2**32 - 1))  # as TrainConfig's
    train: dict = setting(limits=Limits(dict), default_factory=lambda: {
        "steps": 3000, "eval_every": 0, "eval_episodes": 0, "device": "auto"})

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


def check_config(cfg: DaggerConfig):
    """What a DAgger run needs before anything starts: its training settings, the task and
    the spec, and a spec the task's bridge can serve. Returns (TrainConfig, Spec); raises
    ``SettingError``, ``ModelError`` (task) or ``SpecError``, each naming the bad value."""
    from .learning.evaluation import task_mismatch
    from .learning.trainer import TrainConfig, resolve_device
    from .sim.tasks import TaskConfig
    from .spec import Spec, SpecError

    cfg.validate()  # also an instance changed since it was made
    try:
        tcfg = TrainConfig.from_dict({"seed": cfg.seed, "task": cfg.task, **cfg.train})
        resolve_device(tcfg.device)  # a device that is not there, before any recording
    except (SettingError, ValueError, RuntimeError) as exc:
        raise SettingError(f"train: {exc}") from None
    TaskConfig.load(cfg.task)
    spec = Spec.load(cfg.spec or cfg.task)
    problem = task_mismatch(spec, cfg.task, through="ros")
    if problem:
        raise SpecError(f"spec {spec.name} {problem}")
    return tcfg, spec


class RosRig:
    """The processes of a DAgger run or an evaluation, and a node to drive them."""

    def __init__(self, log_dir, task: str, spec: str, checkpoint: str, *, with_expert: bool,
                 dataset=None, mixture_per: str = "step", seed: int = 0,
                 supervisor: dict | None = None, graph=None):
        """``graph``: the ``SimGraph`` to run on (default: a private one of its own)."""
        from .graph import SimGraph
        from .launcher import ProcessGroup
        from .nodes.episode_runner import EpisodeRunner, Spinner

        self.own_graph = graph is None
        self.graph = graph or SimGraph()
        self.group = ProcessGroup(log_dir, env=self.graph.env)
        g = self.group
        self.with_expert = with_expert
        self.supervised = with_expert and supervisor is not None
        try:
            g.start_node("mujoco_bridge", params={"task": task, "mode": "lockstep",
                                                  "seed": seed, "cameras": [""]})
            remap = []
            if with_expert:
                g.start_node("scripted_expert", params={
                    "task": task, "spec": spec, "trigger": "state",
                    "arm_controller": "expert/arm_controller",
                    "gripper_controller": "expert/gripper_controller"})
                g.start_node("command_mux", params={
                    "sources": ["expert", "policy"], "sync_sources": ["expert", "policy"],
                    "sync": True, "mode": "policy", "mixture_per": mixture_per, "seed": seed,
                    "intervention_source": "expert", "joy_sync": self.supervised,
                    "intervention_button": INTERVENTION_BUTTON})
                if self.supervised:
                    g.start_node("scripted_supervisor", params={
                        "spec": spec, "button": INTERVENTION_BUTTON, **supervisor})
                remap = ["-r", "/arm_controller/commands:=/policy/arm_controller/commands",
                         "-r", "/gripper_controller/commands:=/policy/gripper_controller/commands"]
            # the action limits are the checkpoint's (the task's robot)
            g.start_node("policy_node", params={"checkpoint": str(checkpoint), "spec": spec,
                                                "use_sim_time": True,
                                                # lockstep: no state can be late (the bridge
                                                # waits for the answer), so no watchdog
                                                "max_age_periods": 0.0}, extra_args=remap)
            if dataset is not None:
                g.start_node("episode_recorder", params={
                    "dataset": str(dataset), "spec": spec, "task": task, "use_sim_time": True,
                    "auto_stop_on_done": True,
                    "topics": [LABEL_PREFIX + "/arm_controller/commands",
                               LABEL_PREFIX + "/gripper_controller/commands",
                               "/command_mux/source"] + (["/joy"] if self.supervised else [])})
            self.node = EpisodeRunner(context=self.graph.context)
            self.spinner = Spinner(self.node)
            self.node.wait_for_bridge(60.0, alive=g.check)
            self._diag, self._diag_time = {}, {}
            from diagnostic_msgs.msg import DiagnosticArray

            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            self._diag[st.name.split(":")[0]] = {kv.key: kv.value for kv in st.values}
            self._diag_time[st.name.split(":")[0]] = time.monotonic()

    def diagnostics(self, node: str, fresh: bool = False, timeout: float = 5.0) -> dict:
        """The node's newest /diagnostics values; ``fresh``: one published from now on."""
        if fresh:
            asked = time.monotonic()
            while self._diag_time.get(node, 0.0) <= asked and \
                    time.monotonic() < asked + timeout:
                time.sleep(0.02)
        return dict(self._diag.get(node, {}))

    def _wait_ready(self, timeout: float = 60.0) -> None:
        """Every process up and connected before the first episode (the mux must hear every
        source before the first state, or that state would wait for an answer sent earlier)."""
        deadline = time.monotonic() + timeout
        topics = ["/arm_controller/commands"]
        if self.with_expert:
            topics += ["/expert/arm_controller/commands", "/policy/arm_controller/commands"]
        if self.supervised:
            topics.append("/joy")
        while time.monotonic() < deadline:
            self.group.check()
            # the mux sees every source it waits for (its own view of the graph)
            mux_ready = not self.with_expert or \
                self._diag.get("command_mux", {}).get("connected") == "true"
            if all(self.node.count_publishers(t) for t in topics) and \
                    "policy_node" in self._diag and mux_ready:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the processes did not connect within {timeout} s "
                           f"(logs in {self.group.log_dir})")

    def set_params(self, node: str, **params) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
        resp = self.node.call(SetParameters, f"/{node}/set_parameters", req)
        bad = [r.reason for r in resp.results if not r.successful]
        if bad:
            raise RuntimeError(f"{node} refused parameters {params}: {bad}")

    def load(self, checkpoint, timeout: float = 120.0) -> None:
        """Hot-reload the policy node; wait until it has loaded the new policy (which takes
        over at the next tick)."""
        self.set_params("policy_node", checkpoint=str(checkpoint))
        deadline = time.monotonic() + timeout
        while self.diagnostics("policy_node").get("checkpoint_loaded") != str(checkpoint):
            self.group.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the policy node did not load {checkpoint}: "
                                   f"{self.diagnostics('policy_node').get('reload_error')}")
            time.sleep(0.05)

    def episodes(self, n: int, seed: int, record: bool = False, progress=None) -> list:
        """Run ``n`` episodes with seeds seed..seed+n-1 (recording each when ``record``)."""
        from .pipelines import start_recording

        self.set_params("mujoco_bridge", seed=int(seed))
        outcomes = []
        for _ in range(n):
            if record:
                start_recording(self.node, self.group)
            outcomes.append(self.node.run_episode(120.0))
            if progress:
                progress(outcomes)
        return outcomes

    def close(self) -> None:
        if getattr(self, "spinner", None):
            self.spinner.stop()
            self.node.destroy_node()
        self.group.stop()
        if self.own_graph:
            self.graph.close()


def evaluate_ros(checkpoint, task: str, episodes: int, spec: str = "", log_dir=None,
                 seed: int = EVAL_SEED, graph=None) -> dict:
    """Success of ``checkpoint`` on ``task`` through ROS: bridge in lockstep and policy node
    (on ``graph``, a ``SimGraph``; default: a private one)."""
    from .learning.checkpoint import CheckpointError, load_checkpoint, read_metadata
    from .learning.evaluation import task_mismatch
    from .learning.outcomes import summarize
    from .settings import EPISODES
    from .sim.tasks import TaskConfig
    from .spec import Spec

    # before any process starts: the episodes, the task, the spec, and a checkpoint that
    # loads, fits the task's bridge and was trained on the runtime spec
    EPISODES.check("episodes", episodes)
    TaskConfig.load(task)
    runtime = Spec.load(spec or task)
    meta = read_metadata(checkpoint)  # (the weights are loaded once, below)
    problem = task_mismatch(Spec.from_dict(meta["spec"]), task, through="ros")
    if problem:
        raise CheckpointError(f"checkpoint {checkpoint} {problem}")
    load_checkpoint(checkpoint, runtime)
    rig = RosRig(log_dir, task, spec or task, checkpoint, with_expert=False, graph=graph)
    try:
        res = summarize(rig.episodes(episodes, seed))
        res["policy_node"] = rig.diagnostics("policy_node", fresh=True)
    finally:
        rig.close()
    return res


def run_dagger(out, cfg: DaggerConfig, log=print, on_iteration=None, should_stop=None,
               graph=None) -> dict:
    """BC on expert demonstrations, then ``cfg.iterations`` DAgger iterations; returns (and
    writes to ``out``/dagger.json) the per-iteration results.

    ``graph``: the ``SimGraph`` every process of the run talks on (default: a private one,
    closed when the run ends).

    ``on_iteration(row)``: called with each iteration's results once they are written.
    ``should_stop()``: asked after the demonstrations and after each iteration (never in the
    middle of one); when it answers true the run ends there, its results so far written with
    ``"stopped": true``.
    """
    from .graph import SimGraph

    tcfg, spec = check_config(cfg)  # before anything starts or is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    own_graph = graph is None
    graph = graph or SimGraph()
    try:
        return _run_dagger(out, cfg, log, on_iteration, should_stop, graph, tcfg, spec)
    finally:
        if own_graph:
            graph.close()


def _run_dagger(out, cfg, log, on_iteration, should_stop, graph, tcfg, spec) -> dict:
    from .learning.trainer import train
    from .learning.outcomes import summarize
    from .deploy.mux import beta_schedule
    from .pipelines import record_demonstrations, wait_recorded

    gated = cfg.variant == "gated"
    spec_name = cfg.spec or cfg.task
    bc_dir, dagger_dir = out / "data" / "expert", out / "data" / "dagger"
    t0 = time.monotonic()
    log(f"[dagger] simulation on {graph.describe()}")
    log(f"[dagger] recording {cfg.bc_episodes} expert demonstrations of {cfg.task}")
    record_demonstrations(bc_dir, task=cfg.task, spec=spec_name, episodes=cfg.bc_episodes,
                          seed=cfg.seed, log_dir=out / "logs" / "record", graph=graph)
    parts = [(bc_dir, spec, None)]
    results = {"config": asdict(cfg), "iterations": []}

    def stopped() -> bool:
        if should_stop is None or not should_stop():
            return False
        results["stopped"] = True
        (out / "dagger.json").write_text(json.dumps(results, indent=2) + "\n")
        log(f"[dagger] stopped on request after {len(results['iterations'])} iteration(s)")
        return True

    if stopped():
        return results

    def fit(i: int, init: str | None) -> tuple[dict, int]:
        data = aggregate(parts, spec, tcfg.val_fraction, cfg.seed, tcfg.include_interrupted)
        if data.summary["skipped"]:  # (the summary also goes into the checkpoints)
            log(f"[dagger] training data: {data.describe()}")
        labels = int(sum(len(e) for e in data.episodes))
        c = replace(tcfg, init_from=init or "") if init else tcfg
        res = train(data, out / f"train_{i}", c, log=lambda *a, **k: None)
        return res, labels

    res, labels = fit(0, None)
    ckpt = res["last"]
    rig = RosRig(out / "logs" / "dagger", cfg.task, spec_name, ckpt, with_expert=True,
                 dataset=dagger_dir, mixture_per=cfg.mixture_per, seed=cfg.seed,
                 supervisor=dict(cfg.supervisor) if gated else None, graph=graph)
    try:
        rig.set_params("command_mux", mode="expert")
        expert = summarize(rig.episodes(cfg.eval_episodes, EVAL_SEED))
        results["expert"] = _row(expert)
        log(f"[dagger] expert: {_fmt(expert)}")
        beta = share = None
        for i in range(cfg.iterations + 1):
            if i > 0:
                if gated:
                    rig.set_params("command_mux", mode="intervention")
                else:
                    beta = beta_schedule(cfg.schedule, i, cfg.beta0, cfg.decay, cfg.iterations)
                    rig.set_params("command_mux", mode="mixture", beta=float(beta))
                rig.episodes(cfg.episodes_per_iteration, DATA_SEED * i, record=True)
                wait_recorded(dagger_dir)
                if not any(p[0] == dagger_dir for p in parts):
                    parts.append((dagger_dir, label_spec(spec), ["expert"] if gated else None))
                share = expert_share(dagger_dir, label_spec(spec), DATA_SEED * i,
                                     cfg.episodes_per_iteration)
                res, labels = fit(i, ckpt if cfg.warm_start else None)
                ckpt = res["last"]
                rig.load(ckpt)
            rig.set_params("command_mux", mode="policy")
            score = summarize(rig.episodes(cfg.eval_episodes, EVAL_SEED))
            row = {"iteration": i, "variant": None if i == 0 else cfg.variant,
                   "beta": beta, "expert_share": share, "labels": labels,
                   "checkpoint": ckpt, "train_dir": str(out / f"train_{i}"), **_row(score),
                   "latency": {k: v for k, v in rig.diagnostics("policy_node", True).items()
                               if k.startswith(("latency", "compute", "backend"))},
                   "elapsed_s": round(time.monotonic() - t0, 1)}
            results["iterations"].append(row)
            how = "" if i == 0 else (f"expert drove {share:.0%}, " if gated else
                                     f"beta {beta:.2f}, ")
            log(f"[dagger] {'BC' if i == 0 else f'{_NAMES[cfg.variant]} {i}'} ({how}{labels} "
                f"expert labels): {_fmt(score)}")
            (out / "dagger.json").write_text(json.dumps(results, indent=2) + "\n")
            if on_iteration is not None:
                on_iteration(row)
            if cfg.label_budget and labels >= cfg.label_budget:
                log(f"[dagger] label budget {cfg.label_budget} reached")
                break
            if i < cfg.iterations and stopped():
                break
    finally:
        rig.close()
    return results


_NAMES = {"gated": "HG-DAgger", "mixture": "DAgger"}


def expert_share(folder, read_spec, seed: int, episodes: int) -> float:
    """The share of the steps of the episodes with seeds seed..seed+episodes-1 (one DAgger
    iteration) that the expert drove, by the recorded executed source."""
    from .data.dataset import build_dataset

    chosen = [e for e in build_dataset(folder, spec=read_spec, val_fraction=0.0).episodes
              if e.seed is not None and seed <= e.seed < seed + episodes]
    steps = sum(len(e) for e in chosen)
    return float(sum(int((e.executed == "expert").sum()) for e in chosen) / max(steps, 1))


def _row(summary: dict) -> dict:
    return {"episodes": summary["episodes"], "successes": summary["successes"],
            "success_rate": summary["success_rate"], "ci95": summary["ci95"]}


def _fmt(s: dict) -> str:
    return (f"{s['successes']}/{s['episodes']} = {s['success_rate']:.0%} "
            f"(95% CI {s['ci95'][0]:.0%}-{s['ci95'][1]:.0%})")
