"""``robot-imitation``: the suite's command line.

Subcommands:
  demo     the scripted expert on a task through ROS: bridge and expert as separate processes,
           N episodes, success rate with its 95% confidence interval, results as JSON
  expert   the scripted expert on the gymnasium task, without ROS
  info     a dataset's episodes, durations, topics, rates, message counts, success
  plot     PNG of an episode's joint trajectories and actions
  record   scripted-expert demonstrations through ROS into a dataset of rosbag2 bags
  train    Behavior Cloning on a dataset, checkpoints in safetensors
  recover  salvage the episodes a crashed recorder left behind
  evaluate a checkpoint's success rate over N episodes (through ROS, or the gymnasium task);
           exits 3 below --threshold, for CI gates
  dagger   expert demonstrations, BC, then DAgger iterations through ROS, with a table
  pipeline the main job: dagger, then a report (table, plots, rollout videos, latency)
  export   a dataset's episodes as a LeRobotDataset v3.0 (Parquet + MP4)
  import   a LeRobotDataset v3.0 as a dataset of rosbag2 episodes on a spec's topics
  layout   a Foxglove Studio layout for a spec's episodes
  tasks    the built-in tasks and robots
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .paths import dds_profile
from .settings import EPISODES, Limits, add_arguments, arg_type, given_arguments

# Limits of the options that are no dataclass's settings (the others come from TrainConfig and
# DaggerConfig, where each is stated once).
SEED = Limits(int, low=0, high=2**32 - 1)
RATE = Limits(float, low=0.0, high=1.0)
SECONDS = Limits(float, low=0.0, low_open=True)


class UsageError(Exception):
    """A user's mistake found by the command line itself (one line, no traceback)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``--help`` shows the usage): ``robot-imitation train:
    error: argument --steps: must be a positive integer, got 0``, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _train_config():
    from .learning.config import TrainConfig  # no torch: the train options come from its fields

    return TrainConfig


def _check_task(task: str) -> None:
    """Refuse an unknown task at once (``ModelError`` naming it and the known tasks)."""
    from .sim.tasks import TaskConfig

    TaskConfig.load(task)


def _writable_folder(path) -> Path:
    """``path``, checked to be a folder this process can write into or create, without
    creating anything: its nearest existing ancestor must be a folder that takes a file."""
    path = Path(path)
    there = path
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        raise UsageError(f"cannot write into {path}: {there} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write into {path}: {exc.strerror or exc}") from None
    return path


def _read_yaml(path) -> dict:
    """A YAML mapping from ``path``; errors name the file (and the line and column)."""
    from .paths import read_yaml

    data = read_yaml(path, UsageError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of settings, got a {type(data).__name__}")
    return data


def _progress(done: int, total: int, label: str, extra: str = "") -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    end = "\n" if done >= total or not sys.stdout.isatty() else "\r"
    if sys.stdout.isatty() or done == total or done % max(1, total // 10) == 0:
        print(f"{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {extra}",
              end=end, flush=True)


def cmd_tasks(args) -> int:
    from .paths import available
    from .sim.tasks import TaskConfig

    names = available("tasks")
    width = max(map(len, names), default=0)
    for name in names:
        cfg = TaskConfig.load(name)
        print(f"{name:{width}s} robot={cfg.robot} control={cfg.control_rate:g} Hz "
              f"max_steps={cfg.max_steps} cameras={list(cfg.cameras)}")
    print("robots:", ", ".join(available("robots")))
    print("specs:", ", ".join(available("specs")))
    return 0


def cmd_expert(args) -> int:
    import numpy as np

    from .learning.outcomes import wilson_interval
    from .sim.env import ImitationEnv
    from .sim.experts import make_expert

    _check_task(args.task)
    env = ImitationEnv(args.task)
    expert = make_expert(env.sim)
    successes, lengths = 0, []
    start = time.perf_counter()
    for i in range(args.episodes):
        obs, _ = env.reset(seed=args.seed + i)
        expert.reset()
        while True:
            obs, _, term, trunc, info = env.step(expert(obs))
            if term or trunc:
                break
        successes += info["is_success"]
        lengths.append(env._steps)
        _progress(i + 1, args.episodes, "episodes", f"success {successes}/{i + 1}")
    lo, hi = wilson_interval(successes, args.episodes)
    print(f"{args.task}: expert success {successes}/{args.episodes} = "
          f"{successes / args.episodes:.1%} (95% CI {lo:.1%}..{hi:.1%}), mean length "
          f"{np.mean(lengths):.1f} ticks, {time.perf_counter() - start:.1f} s")
    return 0


def _graph(args, command: str | None = None):
    """The ROS graph of a simulated run: a private domain unless --join-ros-graph (said when
    ``command`` is given; ``run_dagger`` says it itself)."""
    from .ros.graph import SimGraph

    graph = SimGraph(join=args.join_ros_graph)
    if command:
        print(f"[{command}] simulation on {graph.describe()}", flush=True)
    return graph


def _join_argument(p) -> None:
    p.add_argument("--join-ros-graph", dest="join_ros_graph", action="store_true",
                   help="run the simulation on this shell's ROS graph (ROS_DOMAIN_ID), e.g. to "
                   "watch it in RViz or Foxglove; by default it runs on a private domain of its "
                   "own, this host only, so that no simulated command reaches a real robot and "
                   "runs on one machine never mix")


def _compose_argument(p, what: str = "the bridge and its controllers (the recorder apart)"
                      ) -> None:
    p.add_argument("--compose", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what} in one process, as ROS 2 composition puts components in one "
                        "container (the default: a lockstep run about a third faster than "
                        "between processes, the same episodes); --no-compose: each node in a "
                        "process of its own, as on a robot")


def _composed(args) -> bool:
    """Whether a simulated run shares one process among the bridge and its controllers:
    ``--compose`` or ``--no-compose``, else yes."""
    return True if args.compose is None else args.compose


def cmd_demo(args) -> int:
    from .paths import ensure_ros_environment

    _check_task(args.task)  # before any process starts or any time passes
    out = _writable_folder(args.out)
    ensure_ros_environment()
    from .ros.graphs import expert_graph
    from .ros.launcher import ProcessGroup
    from .learning.outcomes import summarize
    from .nodes.episode_runner import run_episodes

    graph = _graph(args, "demo")
    print(f"[demo] task {args.task}: bridge ({args.mode}) and scripted expert as separate ROS 2 "
          f"processes, {args.episodes} episodes; logs in {out / 'logs'}")
    start = time.perf_counter()
    with graph, ProcessGroup(out / "logs", env=graph.env) as group:
        group.start_graph(expert_graph(args.task, args.mode, seed=args.seed, cameras=["all"]))
        # the graph's context has no signal handlers: Ctrl-C is a KeyboardInterrupt, which
        # stops the processes
        try:
            outcomes = run_episodes(
                args.episodes, timeout=args.timeout, alive=group.check, context=graph.context,
                seed=args.seed,
                progress=lambda o: _progress(len(o), args.episodes, "episodes",
                                             f"success {sum(x.success for x in o)}/{len(o)}"))
        except TimeoutError:
            group.check()  # a process that died says why, rather than the wait
            raise
        group.check()
    res = summarize(outcomes)
    res.update(task=args.task, mode=args.mode, wall_time_s=time.perf_counter() - start)
    ticks = sum(o.ticks for o in outcomes)
    sim_time = sum(o.sim_time for o in outcomes)
    wall = sum(o.wall_time for o in outcomes)
    res["control_ticks"] = ticks
    res["sim_time_per_wall_time"] = sim_time / wall if wall else 0.0
    with open(out / "results.json", "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
    lo, hi = res["ci95"]
    print(f"[demo] {args.task}: scripted expert through ROS: success {res['successes']}/"
          f"{res['episodes']} = {res['success_rate']:.1%} (95% CI {lo:.1%}..{hi:.1%}); "
          f"{ticks} control ticks, simulated {sim_time:.1f} s in {wall:.1f} s of episodes "
          f"({res['sim_time_per_wall_time']:.1f}x real time); results in {out / 'results.json'}")
    return 0 if res["success_rate"] >= args.min_success else 2


def cmd_record(args) -> int:
    from .ros.pipelines import record_demonstrations

    start = time.perf_counter()
    print(f"[record] {args.episodes} scripted-expert episodes of {args.task} ({args.mode}) "
          f"into {args.dataset}")
    with _graph(args, "record") as graph:
        entries = record_demonstrations(
            args.dataset, task=args.task, spec=args.spec, episodes=args.episodes,
            mode=args.mode, seed=args.seed, storage=args.storage, graph=graph,
            compose=_composed(args),
            progress=lambda n, o: _progress(n, args.episodes, "episodes",
                                            f"last: {'success' if o.success else 'failure'}"))
    ok = [e for e in entries if e["status"] == "ok"]
    for e in entries:
        if e["status"] != "ok":  # (the dataset builder leaves these out, saying so)
            print(f"[record] {e['name']}: {e['status']}"
                  + "".join(f": {e[k]}" for k in ("incomplete", "error") if e.get(k)))
    messages = sum(sum(e["counts"].values()) for e in ok)
    lost = sum(sum(e["received"].values()) - sum(e["counts"].values()) for e in ok)
    print(f"[record] {len(ok)}/{len(entries)} episodes written "
          f"({sum(bool(e.get('success')) for e in ok)} successful), {messages} messages, "
          f"{lost} received but not written, in {time.perf_counter() - start:.1f} s")
    return 0 if len(ok) == len(entries) else 1


def cmd_info(args) -> int:
    from .data.bags import BagError
    from .data.dataset import DatasetError
    from .data.inspect import dataset_info, format_info, unreadable_summary

    try:
        info = dataset_info(args.dataset)
    except (BagError, DatasetError, FileNotFoundError) as exc:
        print(f"info: {exc}", file=sys.stderr)
        return 1
    print(format_info(info), flush=True)
    bad = unreadable_summary(info)
    if bad:  # after everything was printed: a script sees the exit status, a person the list
        print(f"info: {bad}", file=sys.stderr)
        return 1
    return 0


def cmd_plot(args) -> int:
    from .data.inspect import plot_episode
    from .spec import Spec

    from matplotlib.backend_bases import FigureCanvasBase

    episode = int(args.episode) if args.episode.isdigit() else args.episode
    out = Path(args.out or f"{Path(args.dataset).name}_{args.episode}.png")
    if not out.suffix:  # (matplotlib writes a PNG there, named with .png)
        out = out.with_name(out.name + ".png")
    kinds = FigureCanvasBase.get_supported_filetypes()
    if out.suffix[1:].lower() not in kinds:
        raise UsageError(f"--out {out}: the plot's format is its extension, one of "
                         + ", ".join(f".{k}" for k in sorted(kinds)))
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give the image file to write")
    if out.exists() and not args.overwrite:  # (a run's loss.png, an earlier plot)
        raise UsageError(f"--out {out} exists: not replaced (choose another --out, or "
                         "--overwrite)")
    _writable_folder(out.parent)
    made = out.parent
    while not made.parent.exists():  # the first folder this creates (removed on a failure)
        made = made.parent
    made = None if made.exists() else made
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        legend = plot_episode(args.dataset, episode, out,
                              spec=Spec.load(args.spec) if args.spec else None)
    except BaseException:
        if made is not None and not out.exists():
            shutil.rmtree(made, ignore_errors=True)
        raise
    print(f"wrote {out}")
    if legend:
        print(legend if isinstance(legend, str) else "\n".join(map(str, legend)))
    return 0


def cmd_export(args) -> int:
    from .data.lerobot import export_lerobot

    out = _writable_folder(args.out)
    report = export_lerobot(
        args.dataset, out, spec=args.spec, fps=args.fps, task_text=args.task_text,
        robot_type=args.robot_type, codec=args.codec, crf=args.crf,
        include_interrupted=args.include_interrupted, overwrite=args.overwrite,
        progress=lambda done, total, name: _progress(done, total, "exporting", name))
    print(report.describe())
    return 0


def cmd_import(args) -> int:
    from .data.lerobot import import_lerobot

    out = _writable_folder(args.out)
    report = import_lerobot(args.source, args.spec, out, mapping=args.mapping,
                            overwrite=args.overwrite,
                            progress=lambda done, total, name: _progress(done, total,
                                                                         "importing", name))
    print(report.describe())
    return 0


def cmd_layout(args) -> int:
    from .data.foxglove import write_layout
    from .spec import Spec

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give the JSON file to write")
    if out.exists() and not args.overwrite:  # (a layout arranged in Foxglove and saved there)
        raise UsageError(f"--out {out} exists: not replaced (choose another --out, or "
                         "--overwrite)")
    _writable_folder(out.parent)
    path = write_layout(Spec.load(args.spec), out)
    print(f"wrote {path} (Foxglove: Layouts, Import from file)")
    return 0


def cmd_train(args) -> int:
    from .data.dataset import DatasetError, dataset_spec
    from .learning.evaluation import task_mismatch
    from .learning.trainer import TrainConfig, resolve_device, train
    from .settings import SettingError
    from .spec import SpecError

    settings = _read_yaml(args.config) if args.config else {}
    try:
        TrainConfig.from_dict(settings)  # the file's own mistakes, named with the file
    except SettingError as exc:
        raise SettingError(f"{args.config}: {exc}") from None
    given = given_arguments(args, TrainConfig, settings)
    if "lr" in given and given["lr"] == 0:
        # (1e-400 reads as 0.0, which stood for the family's default: trained at 1e-3)
        where = "--lr" if getattr(args, "lr", None) is not None else f"{args.config}: lr"
        raise SettingError(f"{where} {given['lr']!r}: a learning rate of 0 (or one too small "
                           "for a float, such as 1e-400) trains nothing; leave it out for the "
                           "policy family's default")
    cfg = TrainConfig.from_dict(given)
    # Up front, before any time passes: the device, the task, the dataset and its spec, the
    # output folder.
    try:
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as exc:
        raise SettingError(str(exc)) from None
    if cfg.task:
        _check_task(cfg.task)
    root = Path(args.dataset)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    spec = dataset_spec(root, args.spec)
    if cfg.robot:  # its limits fit the spec's actions (LimitsError naming both otherwise)
        from .deploy.limits import robot_limits

        robot_limits(cfg.robot, spec)
    if cfg.task and cfg.eval_episodes:
        problem = task_mismatch(spec, cfg.task, "gym")
        if problem:
            raise SpecError(f"spec {spec.name} {problem} (--task is where the policy is "
                            "evaluated)")
    from .learning.trainer import check_run_folder

    _writable_folder(args.out)
    # what the run reads: never inside a folder --overwrite clears
    inputs = [Path(p) for p in (args.dataset, args.config, cfg.init_from, args.spec)
              if p and Path(p).exists()]
    # (rank 0 of a torchrun only: the other ranks start while it may be writing there);
    # --overwrite: the earlier run is removed whole when this one writes its first file
    if os.environ.get("RANK", "0") == "0":
        check_run_folder(args.out, args.overwrite, inputs)
    start = time.perf_counter()

    def progress(step, total, row):
        extra = " ".join(f"{k} {v:.4g}" for k, v in row.items()
                         if k in ("train_loss", "val_loss", "success_rate"))
        _progress(step, total, "steps", extra)

    result = train(args.dataset, args.out, cfg, spec=args.spec, progress=progress,
                   overwrite=bool(args.overwrite) and os.environ.get("RANK", "0") == "0",
                   inputs=inputs)
    if not result:  # a non-zero torchrun rank
        return 0
    by = {"success_rate": "by success rate", "val_loss": "by validation loss",
          "last": "the last weights"}.get(result.get("best_by"), "")
    zero = result["best_success_rate"] == 0
    print(f"[train] {result['steps']} steps on {result['device']} "
          f"(x{result['world_size']}) in {time.perf_counter() - start:.1f} s, "
          f"{result['samples_per_s']:.0f} samples/s; "
          + (f"best val loss {result['best_val_loss']:.4g}"
             if math.isfinite(result["best_val_loss"]) else "no validation episodes")
          + (f", best success {result['best_success_rate']:.0%}"
             + (" (no evaluation succeeded)" if zero else "")
             if result['best_success_rate'] is not None else "")
          + f"; best checkpoint {result['best']}" + (f" ({by})" if by else ""))
    return 0


def cmd_recover(args) -> int:
    from .recording.recover import RecoverError, main_summary, recover_dataset

    try:
        report = recover_dataset(args.path)
    except (RecoverError, OSError) as exc:
        print(f"recover: {exc}", file=sys.stderr)
        return 1
    out, err = main_summary(report)
    if out:
        print(out, flush=True)
    if err:
        print(err, file=sys.stderr)
    return 0 if report.ok else 1


def _backend_kind(value: str) -> str:
    """An inference backend's name (checked when given: the backends import torch)."""
    from .deploy.backends import KINDS

    if value not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown backend {value!r} (known: {', '.join(KINDS)})")
    return value


def cmd_evaluate(args) -> int:
    start = time.perf_counter()
    _check_task(args.task)
    if not args.ros:  # (ignored without a word before: the run was not what was asked)
        ros_only = [flag for flag, on in (
            ("--compose" if args.compose else "--no-compose", args.compose is not None),
            ("--join-ros-graph", args.join_ros_graph)) if on]
        if ros_only:
            raise UsageError(f"{' and '.join(ros_only)}: for a run through ROS (--ros, the "
                             "default); --gym runs without ROS")
    if args.out:  # (found only when the result was written, all run)
        _writable_folder(Path(args.out).parent)
        if Path(args.out).is_dir():
            raise UsageError(f"--out {args.out} is a folder: give the JSON file to write")
        checkpoint = Path(args.checkpoint).resolve()
        if checkpoint.is_dir() and checkpoint in Path(args.out).resolve().parents:
            raise UsageError(f"--out {args.out} is inside the checkpoint {args.checkpoint}: "
                             "not written there (choose another --out)")
        if Path(args.out).exists() and not args.overwrite:
            raise UsageError(f"--out {args.out} exists: not replaced (choose another --out, or "
                             "--overwrite)")
    with _episodes_on_interrupt(args.episodes) as progress:
        res = _evaluate(args, progress)
    res.update(checkpoint=str(args.checkpoint), task=args.task,
               through="ros" if args.ros else "gymnasium", threshold=args.threshold,
               passed=res["success_rate"] >= args.threshold,
               wall_time_s=time.perf_counter() - start)
    lo, hi = res["ci95"]
    print(f"[evaluate] {args.checkpoint} on {args.task} ({res['through']}): success "
          f"{res['successes']}/{res['episodes']} = {res['success_rate']:.1%} "
          f"(95% CI {lo:.1%}..{hi:.1%}); threshold {args.threshold * 100:.10g}%: "
          f"{'pass' if res['passed'] else 'FAIL'}")
    if "policy" in res:  # (through ROS, the policy node logs its own)
        print(f"[evaluate] backend {res['policy']['backend']}, {res['policy']['chunking']}")
    if args.out:  # whole or not at all: a temporary file renamed
        from .paths import write_text_whole

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_whole(args.out, json.dumps(res, indent=2) + "\n")
    return 0 if res["passed"] else 3


@contextlib.contextmanager
def _episodes_on_interrupt(total: int):
    """Ctrl-C during an evaluation: the exit line says how many episodes ran and how many
    succeeded (``main`` prints the interrupt's ``kept``); a partial run is neither a pass nor a
    fail, and writes nothing. Yields the progress callback (the episodes so far, shown)."""
    done: list = []

    def progress(results) -> None:
        done[:] = list(results)
        ok = sum(bool(r.success) for r in done)
        _progress(len(done), total, "episodes", f"{ok} successful")

    try:
        yield progress
    except KeyboardInterrupt as exc:
        if done:
            ok = sum(bool(r.success) for r in done)
            exc.kept = (f"{len(done)} of {total} episodes ran, {ok} successful (a partial "
                        "evaluation: neither pass nor fail, nothing written)")
        raise


def _evaluate(args, progress) -> dict:
    if args.ros:
        from .dagger import evaluate_ros

        # checks the checkpoint against the task and the runtime spec before it starts anything
        out_dir = Path(args.out).parent if args.out else Path("runs/evaluate")
        with _graph(args, "evaluate") as graph:
            return evaluate_ros(args.checkpoint, args.task, args.episodes, args.spec or "",
                                log_dir=out_dir / "logs", seed=args.seed, graph=graph,
                                backend=args.backend, robot=args.robot,
                                allow_unlimited=args.allow_unlimited, progress=progress,
                                compose=_composed(args))
    else:
        from .deploy.runtime import load_policy
        from .learning.checkpoint import CheckpointError
        from .learning.evaluation import evaluate_loaded, task_mismatch
        from .spec import Spec

        spec = Spec.load(args.spec) if args.spec else None
        # loaded as the policy node loads it: the same backend, limits and controller
        loaded = load_policy(args.checkpoint, spec, args.backend, threads=1)
        problem = task_mismatch(loaded.spec if spec is None else spec, args.task, "gym")
        if problem:
            raise CheckpointError(f"checkpoint {args.checkpoint} {problem}")
        if spec is not None:
            loaded.spec = spec
        return evaluate_loaded(loaded, args.task, args.episodes, args.seed, robot=args.robot,
                               allow_unlimited=args.allow_unlimited, progress=progress)


def _dagger_settings():
    from .algorithms.dagger_settings import DaggerSettings  # no torch, no ROS

    return DaggerSettings


def _dagger_config(args):
    """The DaggerConfig of the options of ``dagger_arguments``."""
    from .algorithms.dagger_settings import to_config

    return to_config(given_arguments(args, _dagger_settings()))


def _dagger_out(args, cfg) -> Path:
    """--out checked before anything starts: writable, and empty or new unless --overwrite
    (which ``run_dagger`` clears)."""
    from .algorithms.dagger import run_inputs
    from .paths import check_out

    _writable_folder(args.out)
    return check_out(args.out, args.overwrite, run_inputs(cfg),
                     "(choose another --out, or --overwrite)")


@contextlib.contextmanager
def _kept_on_interrupt(out):
    """Ctrl-C during a DAgger run: the exit line says where the iterations done are (``main``
    prints the interrupt's ``kept``)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        results = Path(out) / "dagger.json"
        if results.is_file():
            exc.kept = f"the iterations done are in {results}"
        raise


def cmd_dagger(args) -> int:
    from .dagger import check_config, run_dagger

    cfg = _dagger_config(args)
    check_config(cfg)
    _dagger_out(args, cfg)
    with _kept_on_interrupt(args.out), _graph(args) as graph:
        run_dagger(args.out, cfg, graph=graph, overwrite=args.overwrite,
                   compose=_composed(args))
    return 0


def cmd_pipeline(args) -> int:
    """The main job: expert demonstrations, BC, DAgger iterations, evaluation, report."""
    from .dagger import check_config, run_dagger
    from .report import write_report

    start = time.perf_counter()
    cfg = _dagger_config(args)
    check_config(cfg)
    _dagger_out(args, cfg)
    print(f"[pipeline] {cfg.task} through ROS: {cfg.bc_episodes} expert demonstrations, BC, "
          f"{cfg.iterations} DAgger iterations of {cfg.episodes_per_iteration} episodes, "
          f"{cfg.eval_episodes} evaluation episodes each; output in {args.out}", flush=True)
    with _kept_on_interrupt(args.out):
        with _graph(args) as graph:
            results = run_dagger(args.out, cfg, graph=graph, overwrite=args.overwrite,
                                 compose=_composed(args))
        report = write_report(args.out, results, videos=not args.no_videos)
    print(f"[pipeline] done in {time.perf_counter() - start:.0f} s: report {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robot-imitation", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, about: str) -> argparse.ArgumentParser:
        """A subcommand whose own --help opens with what it does."""
        return sub.add_parser(name, help=about, description=about)

    def task_option(p, what: str = "the task") -> None:
        p.add_argument("--task", default="push",
                       help=f"{what}, one of `robot-imitation tasks` (default: push)")

    def episodes_option(p, n: int) -> None:
        p.add_argument("--episodes", type=arg_type(EPISODES, "episodes"), default=n,
                       help=f"episodes to run (default: {n})")

    def mode_option(p) -> None:
        p.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep",
                       help="lockstep: the bridge steps a state once it is answered, as fast "
                       "as both sides go (the same episodes on any machine); realtime: "
                       "paced by the wall clock (default: lockstep)")

    p = command("demo", "the scripted expert through ROS on a task (default: push)")
    task_option(p)
    episodes_option(p, 20)
    mode_option(p)
    p.add_argument("--seed", type=arg_type(SEED, "seed"), default=1000,
                   help="base seed (episode k uses seed+k)")
    p.add_argument("--timeout", type=arg_type(SECONDS, "timeout"), default=120.0,
                   help="seconds per episode at most")
    p.add_argument("--min-success", type=arg_type(RATE, "min_success"), default=0.0,
                   help="exit with code 2 when the success rate is below this (0..1)")
    p.add_argument("--out", default="runs/demo", help="output folder (results.json, logs/)")
    _join_argument(p)
    p.set_defaults(func=cmd_demo)

    p = command("expert", "the scripted expert on the gymnasium task, without ROS")
    task_option(p)
    episodes_option(p, 50)
    p.add_argument("--seed", type=arg_type(SEED, "seed"), default=0,
                   help="base seed (episode k uses seed+k; default: 0)")
    p.set_defaults(func=cmd_expert)

    p = command("record", "record scripted-expert demonstrations through ROS")
    p.add_argument("dataset", help="dataset folder (created if missing)")
    task_option(p)
    p.add_argument("--spec", default=None, help="spec name or path (default: the task's)")
    episodes_option(p, 10)
    mode_option(p)
    p.add_argument("--seed", type=arg_type(SEED, "seed"), default=0,
                   help="base seed (episode k uses seed+k; default: 0)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="rosbag2 storage of the episodes' bags (default: mcap)")
    _compose_argument(p, "the bridge and the expert (the recorder apart)")
    _join_argument(p)
    p.set_defaults(func=cmd_record)

    p = command("info", "episodes, durations, topics, rates, counts, success")
    p.add_argument("dataset", help="dataset folder, or a folder of bags")
    p.set_defaults(func=cmd_info)

    p = command("plot", "PNG of an episode's joint trajectories and actions")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("episode", nargs="?", default="0", help="episode name or index (default 0)")
    p.add_argument("--out", help="PNG path (default: <dataset>_<episode>.png; its folders "
                   "are created)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--spec", help="spec (default: the dataset's)")
    p.set_defaults(func=cmd_plot)

    p = command("train", "Behavior Cloning on a dataset (torchrun for DDP)")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoints, logs); "
                   "one that holds files is refused without --overwrite")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (an "
                   "earlier run's files there are replaced)")
    p.add_argument("--spec", help="spec (default: the dataset's)")
    p.add_argument("--config", help="YAML of training settings (TrainConfig fields)")

    # one option per TrainConfig field, with its limits, description and default (given
    # options override the --config file's values)
    add_arguments(p, _train_config())
    p.set_defaults(func=cmd_train)

    p = command("recover", "salvage the episodes a crashed recorder left behind")
    p.add_argument("path", help="dataset folder (or one episode's bag folder)")
    p.set_defaults(func=cmd_recover)

    p = command("evaluate", "a checkpoint's success rate, exit 3 below a threshold")
    p.add_argument("checkpoint", help="checkpoint folder")
    task_option(p, "the task the episodes run on")
    p.add_argument("--spec", help="runtime spec (default: the checkpoint's)")
    episodes_option(p, 50)
    p.add_argument("--seed", type=arg_type(SEED, "seed"), default=500_000,
                   help="episode k uses seed+k")
    p.add_argument("--threshold", type=arg_type(RATE, "threshold"), default=0.0,
                   help="exit with code 3 when the success rate is below this (0..1)")
    p.add_argument("--out", help="write the result as JSON here (an existing file is refused "
                   "without --overwrite, one inside the checkpoint always)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    way = p.add_mutually_exclusive_group()
    way.add_argument("--ros", dest="ros", action="store_true", default=True,
                     help="through ROS: bridge in lockstep and policy node (default)")
    way.add_argument("--gym", dest="ros", action="store_false",
                     help="in the gymnasium task, without ROS (the same controller, action "
                          "limits and backend as the policy node: the same episodes)")
    p.add_argument("--backend", type=_backend_kind, default="eager",
                   help="inference backend, both ways: eager (default, the reference), "
                        "torchscript, onnxruntime or numpy")
    p.add_argument("--robot", default="", help="action limits from this robot (config/robots "
                   "name or YAML) instead of the checkpoint's, as the policy node's `robot`")
    p.add_argument("--allow-unlimited", action="store_true",
                   help="a checkpoint without action limits (trained before they were stored) "
                        "commands without any, as the policy node's `allow_unlimited`")
    _compose_argument(p, "through ROS, the bridge and the policy node")
    _join_argument(p)
    p.set_defaults(func=cmd_evaluate)

    def dagger_arguments(p, out: str, defaults: dict) -> None:
        p.add_argument("--out", default=out, help=f"output folder (dagger.json, the datasets, "
                       f"train_<i>/ checkpoints, logs/) (default: {out}); one that holds "
                       "files is refused without --overwrite")
        p.add_argument("--overwrite", action="store_true", help="clear a non-empty --out "
                       "first (an earlier run's files there are deleted)")
        # one option per DaggerConfig setting (algorithms.dagger_settings: the supervisor's
        # --hold and --patience, the training's --steps and --device), with its limits,
        # description and default; ``defaults``: the command's own
        add_arguments(p, _dagger_settings(), defaults=defaults)
        _compose_argument(p)
        _join_argument(p)

    p = command("dagger", "BC, then DAgger iterations through ROS")
    dagger_arguments(p, "runs/dagger", {"train_steps": 3000})
    p.set_defaults(func=cmd_dagger)

    p = command("pipeline", "the main job: demonstrations, BC, DAgger, report")
    # the main job: 10 HG-DAgger iterations, each policy trained afresh on all data (warm
    # starts carried one fit's quirks into the next): 85-95% of the expert's success over the
    # last eight iterations through ROS, in 5 to 7 minutes on 2 cores (README)
    dagger_arguments(p, "runs/pipeline", {"train_steps": 4000, "iterations": 10,
                                          "warm_start": False})
    p.add_argument("--no-videos", action="store_true",
                   help="no MP4 rollout videos in the report (the table and plots only)")
    p.set_defaults(func=cmd_pipeline)

    p = command("export", "a dataset as a LeRobotDataset v3.0 (Parquet + MP4)")
    p.add_argument("dataset", help="dataset folder (its usable episodes: status ok)")
    p.add_argument("--format", choices=("lerobot",), default="lerobot",
                   help="the dataset format written: LeRobotDataset v3.0 (the only one)")
    p.add_argument("--out", required=True, help="the LeRobot dataset's folder")
    p.add_argument("--spec", help="spec (default: the dataset's)")
    p.add_argument("--fps", type=arg_type(Limits(float, low=0.0, low_open=True), "fps"),
                   help="frames per second (default: the spec's control rate; a lower rate "
                   "must divide it)")
    p.add_argument("--task-text", help="the task's description for every episode (default: "
                   "the recorded task's name)")
    p.add_argument("--robot-type", help="info.json's robot_type (default: the task's robot)")
    p.add_argument("--codec", choices=("h264", "av1"), default="h264",
                   help="camera videos: H.264 (libx264) or AV1 (SVT-AV1, LeRobot's default)")
    p.add_argument("--crf", type=arg_type(Limits(int, low=0, high=51), "crf"), default=18,
                   help="video quality (lower: closer to the recorded frames, larger files)")
    p.add_argument("--include-interrupted", action="store_true",
                   help="also export the episodes that did not end (interrupted, recovered)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)

    p = command("import", "a LeRobotDataset v3.0 as rosbag2 episodes")
    p.add_argument("source", help="the LeRobot dataset's folder (meta/, data/, videos/)")
    p.add_argument("--spec", required=True, help="spec the episodes are written for")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--mapping", help="YAML: which LeRobot feature fills which spec field "
                   "(default: by element names)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_import)

    p = command("layout", "a Foxglove Studio layout for a spec's episodes")
    p.add_argument("--spec", default="push_image", help="spec name or path")
    p.add_argument("--out", default="robot_imitation_layout.json", help="JSON file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_layout)

    p = command("tasks", "list the built-in tasks and robots")
    p.set_defaults(func=cmd_tasks)
    return parser


# The project's user-error exceptions, by module: an error of a module that was never imported
# cannot have been raised, so main() needs none of them imported (some import torch).
USER_ERRORS = (("robot_imitation.settings", "SettingError"),
               ("robot_imitation.paths", "MujocoGLError"),
               ("robot_imitation.spec", "SpecError"),
               ("robot_imitation.sim.robot", "ModelError"),
               ("robot_imitation.learning.checkpoint", "CheckpointError"),
               ("robot_imitation.data.dataset", "DatasetError"),
               ("robot_imitation.data.bags", "BagError"),
               ("robot_imitation.data.lerobot", "LeRobotError"),
               ("robot_imitation.recording.recorder", "RecorderError"),
               ("robot_imitation.recording.recover", "RecoverError"),
               ("robot_imitation.deploy.limits", "LimitsError"),
               ("robot_imitation.deploy.backends", "BackendError"),
               ("robot_imitation.ros.launcher", "ProcessDied"),
               ("robot_imitation.paths", "RunFolderError"))


def user_error(exc: BaseException) -> str | None:
    """The one line to show for a user's mistake (or a failing environment: a file, a process
    that died, a wait that ran out), or None for anything else: a bug keeps its traceback."""
    known = [UsageError, TimeoutError, OSError]
    for module, name in USER_ERRORS:
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            known.append(getattr(mod, name))
    if not isinstance(exc, tuple(known)):
        return None
    text = getattr(exc, "summary", None) or str(exc)
    if isinstance(exc, OSError) and exc.strerror and not getattr(exc, "summary", None):
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or \
        type(exc).__name__


def after_interrupt() -> None:
    """What a command does first once Ctrl-C (or SIGTERM) has stopped it: a second signal is
    ignored (it must not stop the cleanup), and so are the destructors that fail from then on.
    The interrupt lands anywhere, inside an object's ``__init__`` too, and such an object fails
    when it is collected: rclpy's ``Future`` cut short before its ``_exception`` printed
    "Exception ignored in ... AttributeError: 'Future' object has no attribute '_exception'"
    after the command's last line (seen once in a CI run of ``dagger``)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.unraisablehook = lambda unraisable: None


def main(argv=None) -> int:
    """Run a subcommand. A user's mistake is one line, ``robot-imitation <command>: <what>``,
    on stderr and exit code 1 (argparse's own: 2); Ctrl-C (SIGTERM too) stops the command's
    processes and exits 130 (143); anything else is a bug and keeps its traceback."""
    from .paths import MujocoGLError

    try:
        parser = build_parser()   # imports the simulation (its tasks' settings)
    except MujocoGLError as exc:
        print(f"robot-imitation: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    prog = f"robot-imitation {args.command}"
    terminated = []

    def on_sigterm(signum, frame):  # as Ctrl-C: the same cleanup (a service manager, CI)
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        dds_profile()  # a bad ROBOT_IMITATION_DDS_PROFILE: refused before anything is written
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        after_interrupt()
        launcher = sys.modules.get("robot_imitation.ros.launcher")
        if launcher is not None:
            launcher.stop_all_groups()  # normally stopped already, by their with-blocks
        kept = getattr(exc, "kept", "")
        print(f"{prog}: {'terminated' if terminated else 'interrupted'}"
              + (f": {kept}" if kept else ""), file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - a user's mistake is one line, a bug re-raised
        message = user_error(exc)
        if message is None:
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
