"""The ROS world: the processes of a recording, evaluation or DAgger run on a ROS graph, and
``RosWorld``, the learning algorithms' world over them (``algorithms``).

Processes (one group for the whole run, on a private ROS graph unless the caller joins its own:
``graph.SimGraph``): the bridge in lockstep, the scripted expert answering every state on
``/expert/...``, the policy node on ``/policy/...``, the command mux (``sync``) forwarding one of
them to the robot, and the recorder, which keeps the spec's topics, the expert's labels and the
executed source (``/command_mux/source``) of each step. The ``gated`` driver adds the scripted
supervisor, which holds the mux's intervention button (a ``sensor_msgs/Joy`` stamped like each
state) as the person of an HG-DAgger run would. The recorded observations are paired with the
expert's labels (not the executed commands: the data is read with ``label_spec``).

Every answer names the state it answers and the bridge pairs them exactly (``bridge.stepper``),
so a policy's episodes here equal its episodes in the gymnasium world (``rollouts.gym``) with
the same backend and seeds.
"""
from __future__ import annotations

import time
from pathlib import Path

from .base import EVAL_SEED, ROLLOUT_BACKEND

from ..ros.graphs import INTERVENTION_BUTTON, LABEL_PREFIX  # noqa: F401 (declared with the graphs)


def label_spec(spec, prefix: str = LABEL_PREFIX):
    """``spec`` with its actions read from the expert's label topics (``prefix`` + topic)."""
    from ..spec import Spec

    data = spec.to_dict()
    for a in data["actions"]:
        a["topic"] = prefix + a["topic"]
    data["name"] = f"{spec.name}_labels"
    return Spec.from_dict(data)


def aggregate(parts: list, spec, val_fraction: float = 0.1, seed: int = 0,
              include_interrupted: bool = False):
    """One ``Dataset`` from several (folder, spec used to read it, sources to keep or None)
    parts, under ``spec``; its ``summary`` says what was used and what each part skipped
    (episode names prefixed with their folder's: the parts' episodes share names)."""
    from ..data.dataset import (Dataset, build_dataset, build_summary, compute_stats,
                               split_episodes)

    episodes, used, skipped = [], [], {}
    for folder, read_spec, sources in parts:
        built = build_dataset(folder, spec=read_spec, val_fraction=0.0,
                              include_interrupted=include_interrupted)
        for reason, names in built.summary["skipped"].items():
            skipped.setdefault(reason, []).extend(f"{Path(folder).name}/{n}" for n in names)
        # with sources: the steps they drove (none, when the supervisor never took over)
        part = ([s for e in built.episodes for s in e.segments(sources)] if sources
                else built.episodes)
        episodes += part
        used += [f"{Path(folder).name}/{e.name}" for e in part]
    train, val = split_episodes(episodes, val_fraction, seed)
    summary = build_summary(episodes, skipped, include_interrupted)
    summary["used"] = used
    return Dataset(path=Path(parts[0][0]), spec=spec, episodes=episodes, train=train, val=val,
                   stats=compute_stats(spec, train), summary=summary)


class RosRig:
    """The processes of a DAgger run or an evaluation, and a node to drive them."""

    def __init__(self, log_dir, task: str, spec: str, checkpoint: str, *, with_expert: bool,
                 dataset=None, mixture_per: str = "step", seed: int = 0,
                 supervisor: dict | None = None, graph=None, backend: str = ROLLOUT_BACKEND,
                 keep_commands: bool = False, policy_params: dict | None = None,
                 compose: bool = False):
        """``graph``: the ``SimGraph`` to run on (default: a private one of its own).
        ``backend``: the policy node's inference backend (named, not measured: the gymnasium
        world runs the same one, so both command alike). ``keep_commands``: capture the
        commands the bridge receives (``commands``). ``policy_params``: more parameters of the
        policy node (``robot``, ``allow_unlimited``). ``compose``: the bridge and its
        controllers (expert, policy node, mux, supervisor) in one process
        (``nodes.container``), the recorder apart."""
        from ..ros.graph import SimGraph
        from ..ros.graphs import dagger_graph, evaluation_graph
        from ..ros.launcher import ProcessGroup
        from ..nodes.episode_runner import EpisodeRunner, Spinner

        self.own_graph = graph is None
        self.graph = graph or SimGraph()
        self.group = ProcessGroup(log_dir, env=self.graph.env)
        g = self.group
        self.with_expert = with_expert
        self.supervised = with_expert and supervisor is not None
        try:
            # the graph is declared once (graphs.py), for this rig and the launch files
            ds = None if dataset is None else str(dataset)
            if with_expert:
                nodes = dagger_graph(task, str(checkpoint), spec=spec, dataset=ds,
                                     mixture_per=mixture_per, seed=seed, supervisor=supervisor,
                                     backend=backend)
            else:
                nodes = evaluation_graph(task, str(checkpoint), spec=spec, seed=seed,
                                         backend=backend, dataset=ds)
            for decl in nodes:  # the action limits: the checkpoint's, unless these say else
                if decl.executable == "policy_node":
                    decl.parameters.update(policy_params or {})
            from ..ros.launcher import composable

            g.start_graph(nodes, compose=composable(nodes) if compose else ())
            self.node = EpisodeRunner(context=self.graph.context)
            self._commands = None
            if keep_commands:
                self._capture_commands(task, spec)
            self.spinner = Spinner(self.node)
            self.node.wait_for_bridge(60.0, alive=g.check)
            self._diag, self._diag_time = {}, {}
            self._reports: dict = {}  # publishers' matched subscriptions (MatchedReport)
            from diagnostic_msgs.msg import DiagnosticArray

            from ..nodes.common import checked_subscription

            checked_subscription(self.node, DiagnosticArray, "/diagnostics", self._on_diag, 10)
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _capture_commands(self, task: str, spec_name: str) -> None:
        """Keep every command the bridge receives, by the state it answers."""
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy
        from std_msgs.msg import Float64MultiArray

        from ..pairing import layout_stamp
        from ..sim.tasks import TaskSim
        from ..spec import Spec

        sim = TaskSim(task)
        self._tick_ns = sim.substeps * sim.model.opt.timestep * 1e9  # between two states

        import threading

        topics = [f.topic for f in Spec.load(spec_name).actions]
        self._commands = {t: {} for t in topics}
        self._commands_lock = threading.Lock()

        def keep(topic, msg):
            with self._commands_lock:
                self._commands[topic][layout_stamp(msg.layout)] = list(msg.data)

        from ..nodes.common import checked_subscription

        qos = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE)
        for t in topics:
            checked_subscription(self.node, Float64MultiArray, t, lambda msg, t=t: keep(t, msg),
                                 qos)

    def commands(self, outcome, timeout: float = 10.0):
        """The commands executed in the episode of ``outcome`` (an ``EpisodeOutcome``), one row
        per tick: the answers to its ``ticks`` states before the final one, which lie one
        control period apart (with ``keep_commands``; waits up to ``timeout`` s for answers
        still on their way)."""
        import bisect

        import numpy as np

        from ..pairing import stamp_of

        end = stamp_of(outcome.end_stamp)
        expected = [end - k * self._tick_ns for k in range(outcome.ticks, 0, -1)]
        deadline = time.monotonic() + timeout
        while True:
            with self._commands_lock:
                per_topic = [dict(d) for d in self._commands.values()]
            rows, missing = [], 0
            for topic in per_topic:
                stamps = sorted(s for s in topic if s is not None)
                found = []
                for e in expected:  # stamps are whole ns: allow for the rounding of each
                    i = bisect.bisect_left(stamps, e - 1000)
                    if i < len(stamps) and abs(stamps[i] - e) <= 1000:
                        found.append(topic[stamps[i]])
                    else:
                        missing += 1
                rows.append(found)
            if not missing:
                return np.array([sum(parts, []) for parts in zip(*rows)])
            if time.monotonic() > deadline:
                raise RuntimeError(f"episode {outcome.episode}: {missing} commands of its "
                                   f"{outcome.ticks} ticks were not captured")
            time.sleep(0.02)

    def results(self, outcomes, keep_commands: bool = False) -> list:
        """``rollouts.EpisodeResult`` of each ``EpisodeOutcome`` (with its commands)."""
        from .base import EpisodeResult

        return [EpisodeResult(o.seed, o.success, o.ticks, o.reward,
                              self.commands(o) if keep_commands else None) for o in outcomes]

    def _on_diag(self, msg) -> None:
        from ..nodes.common import matched_reports

        matched_reports(msg, self._reports)
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
        source before the first state, or that state would wait for an answer sent earlier),
        and the parameter services this rig calls found: their clients are made here, so each
        server has discovered its client's answer reader long before the first call (the
        first call of a client made at that moment once lost its answer on a loaded
        machine)."""
        from rcl_interfaces.srv import SetParameters

        from ..nodes.common import uncounted

        deadline = time.monotonic() + timeout
        topics = ["/arm_controller/commands"]
        services = ["policy_node", "mujoco_bridge"]
        if self.with_expert:
            topics += ["/expert/arm_controller/commands", "/policy/arm_controller/commands"]
            services.append("command_mux")
        if self.supervised:
            topics.append("/joy")
        while time.monotonic() < deadline:
            self.group.check()
            # the mux sees every source it waits for (its own view of the graph)
            mux_ready = not self.with_expert or \
                self._diag.get("command_mux", {}).get("connected") == "true"
            # the policy node hears the bridge's episode status (it answers a state only after
            # the status of its stamp: a new episode resets it before its first state)
            policy_ready = "episode" in self._diag.get("policy_node", {})
            # the commands captured (keep_commands): their publishers count this node's
            # subscriptions, or an episode's first answers could miss them (matched per side)
            captured = self._commands is None or not uncounted(self.node, self._commands,
                                                              self._reports)
            if all(self.node.count_publishers(t) for t in topics) and policy_ready and \
                    mux_ready and captured and all(
                        self.node.caller.ready(SetParameters, f"/{n}/set_parameters", 0.0)
                        for n in services):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the processes did not connect within {timeout} s "
                           f"(logs in {self.group.log_dir})")

    def set_params(self, node: str, **params) -> None:
        self.node.set_params(node, **params)

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
        from ..ros.pipelines import start_recording

        self.node.seed_episodes(seed)
        outcomes = []
        for _ in range(n):
            if record:
                start_recording(self.node, self.group)
            outcomes.append(self.node.run_episode(120.0, alive=self.group.check))
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
                 seed: int = EVAL_SEED, graph=None, backend: str = ROLLOUT_BACKEND,
                 keep_commands: bool = False, progress=None, robot: str = "",
                 allow_unlimited: bool = False, compose: bool = False) -> dict:
    """Success of ``checkpoint`` on ``task`` through ROS: bridge in lockstep and policy node
    (on ``graph``, a ``SimGraph``; default: a private one), episodes with seeds
    seed..seed+episodes-1. Returns ``rollouts.summarize``'s summary (each episode's seed,
    success, ticks and final reward) with the policy node's diagnostics; ``keep_commands``:
    also ``results``, each episode's executed commands. ``robot``, ``allow_unlimited``: the
    policy node's parameters."""
    from ..learning.checkpoint import CheckpointError, load_checkpoint, read_metadata
    from ..learning.evaluation import task_mismatch
    from . import summarize
    from ..settings import EPISODES
    from ..sim.tasks import TaskConfig
    from ..spec import Spec, task_spec_name

    # before any process starts: the episodes, the task, the spec, and a checkpoint that
    # loads, fits the task's bridge and was trained on the runtime spec
    EPISODES.check("episodes", episodes)
    TaskConfig.load(task)
    runtime = Spec.load(spec) if spec else Spec.for_task(task)
    meta = read_metadata(checkpoint)  # (the weights are loaded once, below)
    problem = task_mismatch(Spec.from_dict(meta["spec"]), task, through="ros")
    if problem:
        raise CheckpointError(f"checkpoint {checkpoint} {problem}")
    load_checkpoint(checkpoint, runtime)
    params = {k: v for k, v in (("robot", robot), ("allow_unlimited", allow_unlimited)) if v}
    rig = RosRig(log_dir, task, spec or task_spec_name(task), checkpoint, with_expert=False,
                 graph=graph, backend=backend, keep_commands=keep_commands,
                 policy_params=params, compose=compose)
    try:
        results = rig.results(rig.episodes(episodes, seed, progress=progress), keep_commands)
        res = summarize(results)
        res["policy_node"] = rig.diagnostics("policy_node", fresh=True)
        res["bridge"] = rig.diagnostics("mujoco_bridge", fresh=True)
        if keep_commands:
            res["results"] = results
    finally:
        rig.close()
    return res


def expert_share(folder, read_spec, seed: int, episodes: int) -> float:
    """The share of the steps of the episodes with seeds seed..seed+episodes-1 (one DAgger
    iteration) that the expert drove, by the recorded executed source."""
    from ..data.dataset import build_dataset

    chosen = [e for e in build_dataset(folder, spec=read_spec, val_fraction=0.0).episodes
              if e.seed is not None and seed <= e.seed < seed + episodes]
    steps = sum(len(e) for e in chosen)
    return float(sum(int((e.executed == "expert").sum()) for e in chosen) / max(steps, 1))




class RosWorld:
    """The ROS graph as a learning algorithm's world (see ``algorithms``): demonstrations
    recorded by bridge, expert and recorder; a ``RosRig`` with the expert, the mux, the
    supervisor (gated), the policy node and the recorder for everything after."""

    kind = "ros"

    def __init__(self, out, cfg, spec, graph, log=None, compose: bool = False):
        """``cfg``: the ``algorithms.dagger.DaggerConfig``; ``graph``: a ``SimGraph``; ``log``:
        where each recorded demonstration is reported (the run's log); ``compose``: the bridge
        and its controllers in one process (``nodes.container``), the recorder apart."""
        self.out, self.cfg, self.spec, self.graph = Path(out), cfg, spec, graph
        self.log = log
        self.compose = compose
        from ..spec import task_spec_name

        self.spec_name = cfg.spec or task_spec_name(cfg.task)
        self.demo_dir = self.out / "data" / "expert"
        self.dagger_dir = self.out / "data" / "dagger"
        self.rig = None

    def describe(self) -> str:
        return f"on {self.graph.describe()}"

    def demonstrations(self, seeds: range):
        from ..ros.pipelines import record_demonstrations

        def progress(k: int, outcome) -> None:
            if self.log is not None:
                self.log(f"[dagger] demonstration {k}/{len(seeds)}: "
                         f"{'success' if outcome.success else 'failure'} in {outcome.ticks} "
                         "ticks")

        record_demonstrations(self.demo_dir, task=self.cfg.task, spec=self.spec_name,
                              episodes=len(seeds), seed=seeds.start,
                              log_dir=self.out / "logs" / "record", progress=progress,
                              graph=self.graph, compose=self.compose)
        return (self.demo_dir, self.spec, None)

    def deploy(self, checkpoint) -> None:
        if self.rig is None:
            cfg = self.cfg
            self.rig = RosRig(self.out / "logs" / "dagger", cfg.task, self.spec_name,
                              checkpoint, with_expert=True, dataset=self.dagger_dir,
                              mixture_per=cfg.mixture_per, seed=cfg.seed,
                              supervisor=dict(cfg.supervisor) if cfg.variant == "gated"
                              else None, graph=self.graph, compose=self.compose)
        else:
            self.rig.load(checkpoint)

    def evaluate(self, seeds: range, who: str = "policy") -> dict:
        from . import summarize

        self.rig.set_params("command_mux", mode=who)
        return summarize(self.rig.results(self.rig.episodes(len(seeds), seeds.start)))

    def collect(self, seeds: range, driver):
        from ..ros.pipelines import wait_recorded

        if hasattr(driver, "supervisor"):
            self.rig.set_params("command_mux", mode="intervention")
            sources = ["expert"]
        else:
            self.rig.set_params("command_mux", mode="mixture", beta=float(driver.beta))
            sources = None
        self.rig.episodes(len(seeds), seeds.start, record=True)
        wait_recorded(self.dagger_dir)
        share = expert_share(self.dagger_dir, label_spec(self.spec), seeds.start, len(seeds))
        return (self.dagger_dir, label_spec(self.spec), sources), share

    def dataset(self, parts, spec, tcfg):
        unique = []  # every iteration records into one folder: read it once
        for part in parts:
            if not any(Path(p[0]) == Path(part[0]) for p in unique):
                unique.append(part)
        return aggregate(unique, spec, tcfg.val_fraction, tcfg.seed, tcfg.include_interrupted)

    def policy_stats(self) -> dict:
        return {k: v for k, v in self.rig.diagnostics("policy_node", True).items()
                if k.startswith(("latency", "compute", "backend", "chunk"))}

    def close(self) -> None:
        if self.rig is not None:
            self.rig.close()
            self.rig = None
