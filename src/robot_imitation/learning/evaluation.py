"""Closed-loop evaluation of a policy in the gymnasium version of a built-in task (no ROS)."""
from __future__ import annotations

import numpy as np
import torch

from ..spec import Spec, resize_nearest
from ..policies.base import Policy


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
            "cameras": sorted(sim.cfg.cameras or {}), "action_dim": sim.action_dim}


def task_mismatch(spec: Spec, task, through: str = "gym", sim=None) -> str | None:
    """Why a policy of ``spec`` cannot run on ``task`` (``through`` its gymnasium version, or
    ``ros``: its bridge), as the end of a sentence naming the policy ("needs observation
    'object_pose', which task 'reach' does not provide ..."), or None when it can."""
    name = getattr(task, "name", task)
    offer = task_provides(task, sim)
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
                    device="cpu", camera_size=(320, 240)) -> dict:
    """Success rate of ``policy`` over ``episodes`` seeded episodes of ``task``.

    Chunked policies execute the first action of each predicted chunk (receding horizon).
    Camera observations are rendered at ``camera_size`` (the bridge's default) and resized to
    the spec's size by the same function the dataset builder uses. A policy whose spec the
    task cannot serve is refused (``SpecError``) before any episode; so is ``episodes`` < 1.
    """
    from ..settings import EPISODES
    from ..sim.env import ImitationEnv
    from ..spec import SpecError

    EPISODES.check("episodes", episodes)
    images = spec.image_observations
    env = ImitationEnv(task, render_mode="rgb_array" if images else None,
                       width=camera_size[0], height=camera_size[1])
    problem = task_mismatch(spec, task, "gym", sim=env.sim)
    if problem:
        env.close()
        raise SpecError(f"spec {spec.name} {problem}")
    successes, lengths = 0, []
    was_training = policy.training
    policy.eval()
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            policy.reset()
            steps = 0
            while True:
                frames = None
                if images:
                    frames = {}
                    for f in images:
                        camera = f.topic.strip("/").split("/")[0]
                        env.camera = camera
                        frames[f.key] = resize_nearest(env.render(), f.image["width"],
                                                       f.image["height"], f.image["encoding"])
                chunk = policy.act(observation_tensors(obs, spec, device, frames))
                action = chunk[0, 0].double().cpu().numpy()
                obs, _, terminated, truncated, info = env.step(
                    np.clip(action, env.action_space.low, env.action_space.high))
                steps += 1
                if terminated or truncated:
                    break
            successes += bool(info["is_success"])
            lengths.append(steps)
    finally:
        env.close()
        policy.train(was_training)
    return {"episodes": episodes, "successes": successes, "success_rate": successes / episodes,
            "mean_length": float(np.mean(lengths))}
