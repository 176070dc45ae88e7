"""Closed-loop evaluation of a policy in the gymnasium version of a built-in task (no ROS)."""
from __future__ import annotations

import numpy as np
import torch

from ..spec import Spec, resize_nearest
from .policies import Policy


def observation_tensors(obs: dict, spec: Spec, device, frames: dict | None = None) -> dict:
    """One observation dictionary (spec keys) as a batch of one, on ``device``."""
    out = {}
    for f in spec.observations:
        value = frames[f.key] if f.is_image else obs[f.key]
        out[f.key] = torch.as_tensor(np.asarray(value)[None], device=device)
    return out


def evaluate_policy(policy: Policy, spec: Spec, task: str, episodes: int = 20, seed: int = 10_000,
                    device="cpu", camera_size=(320, 240)) -> dict:
    """Success rate of ``policy`` over ``episodes`` seeded episodes of ``task``.

    Chunked policies execute the first action of each predicted chunk (receding horizon).
    Camera observations are rendered at ``camera_size`` (the bridge's default) and resized to
    the spec's size by the same function the dataset builder uses.
    """
    from ..sim.env import ImitationEnv

    images = spec.image_observations
    env = ImitationEnv(task, render_mode="rgb_array" if images else None,
                       width=camera_size[0], height=camera_size[1])
    successes, lengths = 0, []
    was_training = policy.training
    policy.eval()
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
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
