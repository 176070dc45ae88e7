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

import numpy as np

from ..spec import Spec, SpecError, resize_nearest
from .base import EpisodeResult

JOINT_FIELDS = ("position", "velocity", "effort")


class GymWorld:
    """``task``'s gymnasium version, observed through ``spec``."""

    def __init__(self, task: str, spec: Spec, camera_size=(320, 240)):
        from ..sim.env import ImitationEnv

        self.spec = spec
        self.images = spec.image_observations
        self.env = ImitationEnv(task, render_mode="rgb_array" if self.images else None,
                                width=camera_size[0], height=camera_size[1])
        self.sim = self.env.sim
        names = list(self.sim.robot.joint_names)  # the bridge's JointState names, in order
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
                self._poses.append((f.key, f.topic.strip("/")))
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
