"""The main job's report: a Markdown page with the success table, plots, rollout videos and the
policy node's latency, from the results of ``dagger.run_dagger``."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from .rollouts.base import EVAL_SEED


VIDEO_SEED = EVAL_SEED + 1  # the episode each rollout video shows (an evaluation episode)


def rollout_video(path, task: str, checkpoint=None, seed: int = VIDEO_SEED, camera: str = "front",
                  size=(320, 240), fps: float | None = None) -> dict:
    """One episode of ``task`` (the scripted expert, or ``checkpoint`` commanded as the policy
    node commands it: the same controller and action limits) rendered to an MP4: a frame of
    each state, the first and the last included, at the control rate."""
    import av

    from .rollouts.gym import GymWorld
    from .sim.experts import make_expert
    from .spec import Spec

    if checkpoint is None:
        world = GymWorld(task, Spec.for_task(task), size, render=True)
        expert = make_expert(world.sim)

        def act(obs, sim_obs):
            return expert(sim_obs)
    else:
        from .deploy.runtime import load_policy, make_controller
        from .rollouts.base import ROLLOUT_BACKEND

        loaded = load_policy(checkpoint, None, ROLLOUT_BACKEND, threads=1)
        if loaded.spec.image_observations:
            raise ValueError("rollout videos of image policies are not supported here")
        controller, _ = make_controller(loaded)
        world = GymWorld(task, loaded.spec, size, render=True)

        def act(obs, sim_obs):
            return controller.tick(obs).action
    env = world.env
    env.camera = camera
    container = av.open(str(path), "w")
    # the control rate as it is (12.5 Hz plays at 12.5 frames a second, not 12)
    rate = Fraction(fps or env.sim.cfg.control_rate).limit_denominator(1000)
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    try:
        sim_obs, _ = env.reset(seed=seed)
        steps, info, done = 0, {"is_success": False}, False
        while True:  # a frame of every state, the last (the outcome) included
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(env.render()), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            if done:
                break
            action = act(world.observation(sim_obs), sim_obs)
            if action is None:  # NaN/inf from the policy: the node would send nothing
                break
            sim_obs, _, terminated, truncated, info = env.step(action)
            steps += 1
            done = terminated or truncated
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
        world.close()
    return {"steps": steps, "success": bool(info["is_success"])}


def _loss_curve(train_dir: Path):
    """(steps, training loss) logged every ``log_every`` steps, from the run's result.json."""
    path = train_dir / "result.json"
    if not path.is_file():
        return None
    curve = json.loads(path.read_text()).get("loss_curve") or []
    return [s for s, _ in curve], [v for _, v in curve]


def _variant_line(cfg: dict) -> str:
    if cfg.get("variant", "mixture") == "gated":
        return ("DAgger variant: **HG-DAgger**. The policy drives; a scripted supervisor hands "
                "control to the expert when the robot is stuck, pushes the task backwards or "
                "makes no progress, and only the steps the expert drove are labelled (*expert "
                "drove*: their share of the iteration's recorded steps).")
    return ("DAgger variant: **beta-mixture**. The mux executes the expert with probability "
            "beta per step, and the expert labels every visited state.")


def write_report(out, results: dict, videos: bool = True, log=print) -> Path:
    """``out``/report.md with plots (PNG) and rollout videos (MP4) beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    its = results["iterations"]
    task = results["config"]["task"]
    expert = results["expert"]
    # the rows as the run's log names them: "HG-DAgger 1" for the gated variant
    variant = "HG-DAgger" if results["config"].get("variant", "mixture") == "gated" \
        else "DAgger"
    names = ["BC" if r["iteration"] == 0 else f"{variant} {r['iteration']}" for r in its]
    files = ["bc" if r["iteration"] == 0 else f"dagger_{r['iteration']}" for r in its]

    def ci(r):
        return [r["success_rate"] - r["ci95"][0], r["ci95"][1] - r["success_rate"]]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x, label in ((axes[0], [r["iteration"] for r in its], "iteration (0: BC)"),
                         (axes[1], [r["labels"] for r in its], "expert labels (steps)")):
        ax.errorbar(x, [r["success_rate"] for r in its], yerr=np.array([ci(r) for r in its]).T,
                    marker="o", capsize=3, label="policy")
        ax.axhline(expert["success_rate"], color="gray", ls="--", label="expert")
        ax.set_xlabel(label)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{task}: closed-loop success through ROS (95% CI)")
    fig.tight_layout()
    fig.savefig(out / "success.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in zip(names, its):
        curve = _loss_curve(Path(r["train_dir"]))
        if curve:
            ax.plot(*curve, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)

    video_rows = []
    if videos:
        clips = [("expert", None)] + [(f, r["checkpoint"]) for f, r in zip(files, its)]
        for name, ckpt in clips:
            info = rollout_video(out / f"rollout_{name}.mp4", task, ckpt, seed=VIDEO_SEED)
            video_rows.append((name, f"rollout_{name}.mp4", info))
            log(f"[report] rollout_{name}.mp4: {info['steps']} steps, "
                f"{'success' if info['success'] else 'failure'}")

    lines = [f"# Imitation learning on `{task}`: expert, BC and DAgger", "",
             "Every success rate is measured in closed loop through ROS 2 (bridge in lockstep, "
             "policy node, command mux) on the same "
             f"{expert['episodes']} seeded episodes, with its 95% Wilson interval.", "",
             _variant_line(results["config"]), "",
             "| policy | beta | expert drove | expert labels | success | 95% CI |",
             "|---|---|---|---|---|---|",
             f"| expert | - | - | - | {expert['successes']}/{expert['episodes']} = "
             f"{expert['success_rate']:.0%} | {expert['ci95'][0]:.0%}-{expert['ci95'][1]:.0%} |"]
    for name, r in zip(names, its):
        beta = "-" if r.get("beta") is None else f"{r['beta']:.2f}"
        share = "-" if r.get("expert_share") is None else f"{r['expert_share']:.0%}"
        lines.append(f"| {name} | {beta} | {share} | {r['labels']} | "
                     f"{r['successes']}/{r['episodes']} = "
                     f"{r['success_rate']:.0%} | {r['ci95'][0]:.0%}-{r['ci95'][1]:.0%} |")
    lines += ["", "![success](success.png)", "", "![loss](loss.png)", ""]
    if video_rows:
        lines += ["## Rollouts", "", f"One episode per policy (evaluation seed {VIDEO_SEED}, "
                  "the same for each), rendered without ROS:", ""]
        lines += [f"- [{n}]({f}): {i['steps']} steps, "
                  f"{'success' if i['success'] else 'failure'}" for n, f, i in video_rows]
        lines.append("")
    lat = its[-1].get("latency") or {}
    if lat:
        from .deploy.runtime import WINDOW

        timings = {k[:-3]: v for k, v in lat.items() if k.endswith("_ms")}
        others = {k: v for k, v in lat.items() if not k.endswith("_ms") and k != "backend"}
        lines += ["## Policy node latency", "",
                  "Observation stamp to command publish (simulated time: 0 in lockstep), the "
                  "node's compute time per tick and its chunks' inference, over the newest "
                  f"{WINDOW:,} of each at the end of the last evaluation:", "",
                  "| figure | ms |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(timings.items())]
        if others:  # settings and counts (counts since the node started), not milliseconds
            lines += ["", "Chunk execution and counts since the node started: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(others.items())) + "."]
        if "backend" in lat:
            lines.append(f"\nInference backend: `{lat['backend']}` (named for every run of "
                         "the learning loop, not chosen by measurement).")
        lines.append("")
    cfg = results["config"]
    lines += ["## Configuration", "", "```json", json.dumps(cfg, indent=1), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
