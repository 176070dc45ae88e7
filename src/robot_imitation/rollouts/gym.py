"""The gymnasium world: episodes of a built-in task in this process, no ROS.

A policy sees here exactly what the policy node sees on the bridge's topics: each observation
field is taken from the simulation the way ``Spec.extract`` takes it from the bridge's messages
(joints by name from the joint state, poses as x y z qw qx qy qz, float64), and it runs through
the same ``PolicyController`` as the node (``deploy.runtime.make_controller``: chunking and the
action limits the checkpoint carries). The step is the lockstep bridge's control tick. So with
the same backend and seeds, a policy's episodes here and through ROS are the same, command for
command; camera observations are rendered every tick here (the bridge renders at its camera
rate), so policies with cameras are close but not exact.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..spec import Spec, SpecError, resize_nearest
from .base import EpisodeResult

JOINT_FIELDS = ("position", "velocity", "effort")


class GymWorld:
    """``task``'s gymnasium version, observed through ``spec``."""

    def __init__(self, task: str, spec: Spec, camera_size=(320, 240), render: bool = False):
        """``render``: also render frames when the spec has no camera (videos)."""
        from ..sim.env import ImitationEnv

        self.spec = spec
        self.images = spec.image_observations
        self.env = ImitationEnv(task, render_mode="rgb_array" if self.images or render else None,
                                width=camera_size[0], height=camera_size[1])
        self.sim = self.env.sim
        names = list(self.sim.robot.joint_names)  # the bridge's JointState names, in order
        provided = list(self.sim.observe())  # (the poses a pose observation is read from)
        self._joints, self._poses = [], []
        for f in spec.observations:
            if f.is_image:
                continue
            if f.field in JOINT_FIELDS:
                missing = [j for j in f.joints if j not in names]
                if missing:
                    raise SpecError(f"{f.topic}: joints {missing} are not joints of task "
                                    f"'{self.sim.cfg.name}' (it has {names})")
                self._joints.append((f.key, JOINT_FIELDS.index(f.field),
                                     np.array([names.index(j) for j in f.joints])))
            elif f.field == "pose":
                name = f.topic.strip("/")
                if name not in provided:
                    raise SpecError(f"observation '{f.key}' needs {name}, which task "
                                    f"'{self.sim.cfg.name}' does not provide (it provides "
                                    f"{', '.join(provided)})")
                self._poses.append((f.key, name))
            else:
                raise SpecError(f"observation '{f.key}' ({f.type}.{f.field}) has no gymnasium "
                                "counterpart")

    def observation(self, sim_obs: dict) -> dict:
        """The spec's observation of the current state, as the policy node would assemble it
        from the bridge's messages."""
        state = self.sim.joint_state()
        obs = {key: state[i][idx] for key, i, idx in self._joints}
        for key, name in self._poses:
            obs[key] = np.asarray(sim_obs[name], dtype=np.float64)[:7].copy()
        for f in self.images:
            self.env.camera = f.topic.strip("/").split("/")[0]
            obs[f.key] = resize_nearest(self.env.render(), f.image["width"], f.image["height"],
                                        f.image["encoding"])
        return obs

    def run(self, seeds, driver, keep_commands: bool = False, threads: int | None = 1,
            progress=None) -> list:
        """One episode per seed, ``driver`` choosing each tick's action. ``threads``: PyTorch
        threads while running (the policy node's default is 1; None: leave as is)."""
        results = []
        with _torch_threads(threads):
            for seed in seeds:
                results.append(self.episode(int(seed), driver, keep_commands))
                if progress:
                    progress(results)
        return results

    def episode(self, seed: int, driver, keep_commands: bool = False) -> EpisodeResult:
        sim_obs, _ = self.env.reset(seed=seed)
        driver.reset(seed)
        commands, ticks, reward, success = [], 0, 0.0, False
        while True:
            action = driver.act(self.observation(sim_obs), sim_obs)
            if action is None:
                # the controller publishes nothing (NaN/inf): through ROS the bridge would wait
                # for a command that never comes; here the episode ends, failed
                break
            if keep_commands:
                commands.append(np.array(action, dtype=np.float64))
            sim_obs, reward, terminated, truncated, info = self.env.step(action)
            ticks += 1
            if terminated or truncated:
                success = bool(info["is_success"])
                break
        return EpisodeResult(seed, success, ticks, float(reward),
                             np.array(commands) if keep_commands else None)

    def close(self) -> None:
        self.env.close()


class GymLearningWorld(GymWorld):
    """The gymnasium task as a learning algorithm's world (see ``algorithms``), doing what the
    ROS world's processes do: the expert labels every state it sees, an episode's final state
    included (as the recorder keeps its answer to it); the learner runs in a
    ``PolicyController`` that answers every state (as the policy node does, also when the
    expert's action is executed); a mixture draws from one generator seeded with the run's
    seed, once per state (the final state of an episode included, as the command mux forwards
    its answer); the gate is the scripted supervisor's ``InterventionGate``; every executed
    action passes the command mux's action filter (the task's robot's limits)."""

    kind = "gym"

    def __init__(self, task: str, spec: Spec, seed: int = 0, backend: str | None = None):
        from ..sim.experts import make_expert
        from .base import ROLLOUT_BACKEND

        super().__init__(task, spec)
        if self.images:
            raise SpecError(f"spec {spec.name} has camera observations: the gymnasium learning "
                            "world handles low-dimensional specs only")
        self.task = task
        self.expert = make_expert(self.sim)
        self.backend = backend or ROLLOUT_BACKEND
        self.rng = np.random.default_rng(seed)  # the command mux's, seeded alike
        # the command mux's action filter (its default limits: the task's robot's)
        from ..deploy.limits import CommandLimiter, command_limits

        self.mux_filter = CommandLimiter(command_limits(spec, self.sim.cfg.robot), spec)
        self.controller = None
        self.loaded = None

    def describe(self) -> str:
        return f"in the gymnasium task '{self.task}' in this process"

    def deploy(self, checkpoint) -> None:
        from ..deploy.runtime import load_policy, make_controller

        self.loaded = load_policy(checkpoint, self.spec, self.backend, threads=1)
        if self.controller is not None:
            self.controller.close()
        self.controller, _ = make_controller(self.loaded, self.spec)

    def evaluate(self, seeds, who: str = "policy") -> dict:
        from .base import ExpertDriver, MuxedDriver, PolicyDriver, summarize

        driver = ExpertDriver(self.expert) if who == "expert" else PolicyDriver(self.controller)
        return summarize(self.run(seeds, MuxedDriver(driver, self.mux_filter)))

    def demonstrations(self, seeds) -> tuple:
        return [self._labelled(seed, None) for seed in seeds], None

    def collect(self, seeds, driver) -> tuple:
        """(part, share of steps the expert drove): every step labelled; a gated driver's part
        keeps only the expert's steps when the data is built (``dataset``)."""
        episodes = [self._labelled(seed, driver) for seed in seeds]
        steps = sum(len(e) for e in episodes)
        share = sum(int((e.executed == "expert").sum()) for e in episodes) / max(steps, 1)
        return (episodes, ["expert"] if hasattr(driver, "supervisor") else None), float(share)

    def _labelled(self, seed: int, driver):
        """One episode: the expert's label at every state; who drives: the expert alone
        (``driver`` None), a ``Mixture`` or a ``Gated`` driver.

        The final state (the episode ends on it) is labelled too, as the ROS world's recorder
        keeps it: the expert node answers it (demonstrations: its command; DAgger: its plan),
        the policy node answers it, the mux draws for it (mixture per step) or takes the
        episode's choice (per episode) or the supervisor's button for it (gated, the gate
        judging it) and forwards the chosen answer, which the robot never executes (the episode
        is over). Its executed source is the one the mux publishes for it; with the policy
        chosen and no policy answer (NaN/inf) the mux sends nothing, and the recorded source of
        that step is the newest before it (``data.dataset``, rule 7). Demonstrations have no
        executed source (``executed`` None), as a recording without the mux has none."""
        from ..data.dataset import Episode
        from ..sim.supervisor import InterventionGate

        gate = InterventionGate(**driver.supervisor) if hasattr(driver, "supervisor") else None
        per_episode = driver is not None and gate is None and driver.per == "episode"
        sim_obs, _ = self.env.reset(seed=seed)
        self.expert.reset()
        if driver is not None:  # (demonstrations: the expert drives the robot, no mux)
            self.controller.reset()
            self.mux_filter.reset()
        seen = {f.key: [] for f in self.spec.observations}
        labels, executed, success = [], [], False
        episode_choice = None
        final = False  # the state in hand is the episode's final one
        with _torch_threads(1):
            while True:
                obs = self.observation(sim_obs)
                # the label: what the expert commands when it drives the robot itself
                # (demonstrations), its plan where the mux filters what is executed (as the
                # expert node's ``publish: plans`` in the ROS world's DAgger graph)
                label = np.asarray(self.expert(sim_obs) if driver is None
                                   else self.expert.plan(sim_obs), dtype=float)
                for key in seen:
                    seen[key].append(obs[key])
                labels.append(label)
                source = "expert"
                if driver is not None:
                    command = self.controller.tick(obs).action  # answers every state
                    if gate is not None:
                        expert_drives = gate.expert_drives(obs)
                    elif per_episode:
                        if episode_choice is None:
                            episode_choice = bool(self.rng.random() < driver.beta)
                        expert_drives = episode_choice
                    else:
                        expert_drives = bool(self.rng.random() < driver.beta)
                    if not expert_drives:
                        if command is None:  # NaN/inf from the policy: through ROS
                            # nothing is sent; for the final state the step is recorded
                            # still, with the newest source before it
                            if final:
                                executed.append(executed[-1] if executed else "")
                            break
                        source = "policy"
                executed.append(source)
                if final:
                    break  # (its answer is sent, never executed: the episode is over)
                action = label if source == "expert" else command
                if driver is not None:
                    action = self.mux_filter(action, obs)
                sim_obs, _, terminated, truncated, info = self.env.step(action)
                if terminated or truncated:
                    success = bool(info["is_success"])
                    final = True
        n = len(executed)
        return Episode(name=f"seed_{seed}",
                       obs={k: np.stack(v[:n]).astype(np.float32) for k, v in seen.items()},
                       actions=np.stack(labels[:n]).astype(np.float32),
                       t=np.arange(n) / self.spec.control_rate, source="gymnasium",
                       success=success, seed=seed,
                       # demonstrations: no mux, no recorded source (as through ROS)
                       executed=None if driver is None else np.array(executed))

    def dataset(self, parts, spec, tcfg):
        """A ``Dataset`` of the parts' episodes (the expert's steps of gated parts)."""
        episodes = []
        for part, sources in parts:
            episodes += ([s for e in part for s in e.segments(sources)] if sources
                         else list(part))
        return episodes_dataset(episodes, spec, tcfg)

    def policy_stats(self) -> dict:
        c = self.controller
        return {"backend": self.loaded.backend.kind} if c is None else {
            "backend": self.loaded.backend.kind, "chunking": c.describe(),
            "clamped_ticks": c.counters.clamped_ticks, "ticks": c.counters.ticks}


@contextlib.contextmanager
def _torch_threads(n: int | None):
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def episodes_dataset(episodes: list, spec: Spec, tcfg):
    """A ``Dataset`` of in-memory ``episodes``, split by episode as ``tcfg`` says (its
    val_fraction and seed), statistics of the train split."""
    from ..data.dataset import Dataset, build_summary, compute_stats, split_episodes

    train, val = split_episodes(episodes, tcfg.val_fraction, tcfg.seed)
    return Dataset(path=Path("."), spec=spec, episodes=episodes, train=train, val=val,
                   stats=compute_stats(spec, train),
                   summary=build_summary(episodes, {}, tcfg.include_interrupted))


def expert_demonstrations(task: str, seeds, spec: Spec | None = None) -> list:
    """The task's scripted expert's episodes from ``seeds``, labelled by itself, observed as
    the policy node observes (``spec``: default the task's)."""
    world = GymLearningWorld(task, spec or Spec.for_task(task))
    try:
        return world.demonstrations(seeds)[0]
    finally:
        world.close()


def expert_episodes(task: str, seeds, spec: Spec) -> list:
    """The scripted expert's episodes observed through ``spec``, cameras included (rendered as
    the policy node would receive them): ``Episode`` arrays as the dataset builder makes them
    (float64; images uint8), one per seed, the expert driving every step."""
    from ..data.dataset import Episode
    from ..sim.experts import make_expert

    world = GymWorld(task, spec)
    expert = make_expert(world.sim)
    episodes = []
    try:
        for seed in seeds:
            sim_obs, _ = world.env.reset(seed=int(seed))
            expert.reset()
            seen = {f.key: [] for f in spec.observations}
            actions, success = [], False
            while True:
                obs = world.observation(sim_obs)
                action = np.asarray(expert(sim_obs), dtype=np.float64)
                for key in seen:
                    seen[key].append(obs[key])
                actions.append(action)
                sim_obs, _, terminated, truncated, info = world.env.step(action)
                if terminated or truncated:
                    success = bool(info["is_success"])
                    break
            episodes.append(Episode(
                name=f"seed_{seed}", obs={k: np.stack(v) for k, v in seen.items()},
                actions=np.stack(actions), t=np.arange(len(actions)) / spec.control_rate,
                source="gymnasium", success=success, seed=int(seed)))
    finally:
        world.close()
    return episodes
