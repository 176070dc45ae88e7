"""Closed-loop evaluation of a policy in the gymnasium version of a built-in task (no ROS),
commanded as the policy node commands it."""
from __future__ import annotations

import numpy as np
import torch

from ..policies.base import Policy
from ..spec import Spec


def observation_tensors(obs: dict, spec: Spec, device, frames: dict | None = None) -> dict:
    """One observation dictionary (spec keys) as a batch of one, on ``device``."""
    out = {}
    for f in spec.observations:
        value = frames[f.key] if f.is_image else obs[f.key]
        out[f.key] = torch.as_tensor(np.asarray(value)[None], device=device)
    return out


def task_provides(task, sim=None) -> dict:
    """What ``task`` gives a policy: its observations (key -> the topic its bridge publishes
    the key on), its cameras and the number of action values it takes. The same observation
    keys as its gymnasium version (both come from ``TaskSim.observe``; ``sim``: the task's
    ``TaskSim`` when there is one already)."""
    from ..sim.tasks import TaskSim

    if sim is None:
        sim = TaskSim(task)
        sim.reset(0)
    return {"observations": {k: "/joint_states" if k.startswith("joint_") else f"/{k}"
                             for k in sim.observe()},
            "cameras": sorted(sim.cfg.cameras or {}), "action_dim": sim.action_dim,
            "control_rate": float(sim.cfg.control_rate)}


def task_mismatch(spec: Spec, task, through: str = "gym", sim=None, rate: bool = True
                  ) -> str | None:
    """Why a policy of ``spec`` cannot run on ``task`` (``through`` its gymnasium version, or
    ``ros``: its bridge), as the end of a sentence naming the policy ("needs observation
    'object_pose', which task 'reach' does not provide ..."), or None when it can. ``rate``:
    the spec's control rate must be the task's (a policy answers every tick of the task's
    world; a recording may take its steps at a rate of its own)."""
    name = getattr(task, "name", task)
    offer = task_provides(task, sim)
    if rate and abs(spec.control_rate - offer["control_rate"]) > 1e-9 * offer["control_rate"]:
        return (f"runs at {spec.control_rate:g} Hz (its spec '{spec.name}'), and task "
                f"'{name}' ticks at {offer['control_rate']:g} Hz: each of its actions would "
                "be held for another time than in its training data")
    obs, cameras = offer["observations"], offer["cameras"]
    topics = sorted(set(obs.values()), key=list(obs.values()).index)
    for f in spec.observations:
        if f.is_image:
            camera = f.topic.strip("/").split("/")[0]
            if camera not in cameras:
                return (f"needs camera '{camera}' (observation '{f.key}'), which task '{name}' "
                        f"does not have (cameras: {', '.join(cameras) or 'none'})")
        elif through == "ros" and f.topic not in topics:
            return (f"needs observation '{f.key}' on {f.topic}, which the bridge of task "
                    f"'{name}' does not publish (it publishes {', '.join(topics)})")
        elif through != "ros" and f.key not in obs:
            return (f"needs observation '{f.key}', which task '{name}' does not provide (it "
                    f"provides {', '.join(obs)})")
    if spec.action_dim != offer["action_dim"]:
        return (f"commands {spec.action_dim} action values, and task '{name}' takes "
                f"{offer['action_dim']}")
    return None


def evaluate_policy(policy: Policy, spec: Spec, task: str, episodes: int = 20, seed: int = 10_000,
                    device="cpu", camera_size=(320, 240), meta: dict | None = None,
                    backend: str = "eager", keep_commands: bool = False,
                    progress=None) -> dict:
    """Success rate of ``policy`` over ``episodes`` seeded episodes of ``task`` (seeds
    seed..seed+episodes-1), in the gymnasium world, commanded as the policy node commands it
    (``rollouts.gym``): the same controller, action filter and chunking (the first action of
    each predicted chunk). ``meta``: the checkpoint's metadata, whose ``action_limits`` the
    filter applies; without it, the task's robot's limits (what the trainer stores by default).
    ``progress``: called with the results so far after each episode (it may raise to stop).
    The module itself is not touched (a CPU copy runs). A policy whose spec the task cannot
    serve is refused (``SpecError``) before any episode; so is ``episodes`` < 1.

    Returns the summary (``rollouts.summarize``: successes, rate, 95% interval, mean length,
    each episode's seed, success, ticks and final reward)."""
    from ..deploy.runtime import policy_from_module
    from ..settings import EPISODES

    EPISODES.check("episodes", episodes)
    meta = dict(meta or {})
    if meta.get("action_limits") is None:
        from ..deploy.limits import robot_limits
        from ..sim.tasks import TaskConfig

        meta["action_limits"] = robot_limits(TaskConfig.load(task).robot, spec).to_dict()
    loaded = policy_from_module(policy, spec, meta, backend)
    return evaluate_loaded(loaded, task, episodes, seed, camera_size=camera_size,
                           keep_commands=keep_commands, progress=progress)


def evaluate_loaded(loaded, task: str, episodes: int, seed: int, camera_size=(320, 240),
                    keep_commands: bool = False, progress=None, robot: str = "",
                    allow_unlimited: bool = False) -> dict:
    """``evaluate_policy`` for a ``deploy.runtime.LoadedPolicy`` (a checkpoint loaded as the
    policy node loads it); ``keep_commands``: the summary's ``results`` keep each episode's
    commands. ``robot``, ``allow_unlimited``: as the policy node's parameters (the limits of
    that robot instead of the checkpoint's; command without limits when it carries none)."""
    from ..deploy.runtime import make_controller
    from ..rollouts import PolicyDriver, summarize
    from ..rollouts.gym import GymWorld
    from ..settings import EPISODES
    from ..spec import SpecError

    EPISODES.check("episodes", episodes)
    spec = loaded.spec
    problem = task_mismatch(spec, task, "gym")
    if problem:
        raise SpecError(f"spec {spec.name} {problem}")
    controller, _ = make_controller(loaded, spec, robot=robot, allow_unlimited=allow_unlimited)
    world = GymWorld(task, spec, camera_size)
    try:
        results = world.run(range(seed, seed + episodes), PolicyDriver(controller),
                            keep_commands=keep_commands, progress=progress)
    finally:
        world.close()
        controller.close()
    out = summarize(results)
    out["policy"] = {"backend": loaded.backend.kind, "chunking": controller.describe(),
                     "counters": vars(controller.counters),
                     "chunk_inference": controller.timing()}
    if keep_commands:
        out["results"] = results
    return out
