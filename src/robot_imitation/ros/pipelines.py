"""Multi-process pipelines over ROS 2 (used by the command line, the tests and the benchmarks).

``record_demonstrations``: the bridge, the scripted expert and the recorder as separate
processes on a private ROS graph (``graph.SimGraph``); episode after episode, the recorder
starts, the bridge resets, the expert solves the task, and the recorder stops when the task
reports done.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path



def start_recording(runner, group=None, recorder: str = "episode_recorder",
                    timeout: float = 30.0) -> str:
    """Start an episode on the recorder (through ``runner``, an ``EpisodeRunner``), waiting
    while the previous one is still being finished, and asking again while a topic is not
    matched yet (each ask waits the recorder's ``discovery_timeout``; a test run on a loaded
    machine once saw a recorder miss one of the bridge's topics for over 10 s), up to
    ``timeout`` s in all; returns the new episode's name. With ``group``, a recorder process
    that died (while its service is awaited) is reported at once, with its own error
    (``ProcessDied``)."""
    from std_srvs.srv import Trigger

    name = f"/{recorder}/start"
    if not runner.wait_for_service(Trigger, name, timeout,
                                   alive=group.check if group is not None else None):
        raise TimeoutError(f"service {name} not available within {timeout} s")
    deadline = time.monotonic() + timeout
    while True:
        resp = runner.call(Trigger, name, timeout=timeout)
        unmatched = "no matched publisher" in resp.message
        if resp.success or not (unmatched or "still being recorded" in resp.message) or \
                time.monotonic() > deadline:
            break
        if unmatched:
            runner.get_logger().warning(f"{name}: {resp.message}; asking again")
        time.sleep(0.05)
    if not resp.success:
        if group is not None:
            group.check()
        raise RuntimeError(f"recorder did not start: {resp.message}"
                           + _seen_elsewhere(runner, resp.message)
                           + (f" (logs in {group.log_dir})" if group is not None else ""))
    return resp.message.split()[-1]


def _seen_elsewhere(node, refusal: str) -> str:
    """What ``node`` (the run's own, another process) sees published on the topics a
    recorder's refusal says it discovered no publisher of: a topic nobody publishes, or a
    publisher that the recorder's middleware has not discovered though this process has."""
    from ..nodes.common import full_name

    notes = []
    for topic in re.findall(r"(/[\w/]+): no publisher discovered", refusal):
        names = sorted({full_name(i) for i in node.get_publishers_info_by_topic(topic)})
        notes.append(f"; {topic}: this process sees it published by {', '.join(names)}, which "
                     "the recorder's process has not discovered (a middleware fault, unless it "
                     "came up just now)" if names
                     else f"; {topic}: this process sees no publisher either")
    return "".join(notes)


def wait_recorded(dataset, timeout: float = 30.0) -> list:
    """The dataset's index entries once no episode is still being recorded (or at timeout)."""
    index = Path(dataset) / "index.json"
    deadline = time.monotonic() + timeout
    while True:
        entries = json.loads(index.read_text())["episodes"] if index.is_file() else []
        if all(e.get("status") != "recording" for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def record_demonstrations(dataset, task: str = "push", spec: str | None = None,
                          episodes: int = 10, mode: str = "lockstep", seed: int = 0,
                          storage: str = "mcap", log_dir=None, progress=None,
                          episode_timeout: float = 120.0, graph=None,
                          compose: bool = False) -> list[dict]:
    """Record ``episodes`` scripted-expert episodes of ``task`` into ``dataset``, on ``graph``
    (a ``SimGraph``; default: a private ROS graph of its own); ``compose``: the bridge and the
    expert in one process (``nodes.container``), the recorder apart.

    Returns the dataset index entries of the recorded episodes. Before any process starts,
    refuses (naming the bad value) a number of episodes below 1, an unknown task or spec, a spec
    the task's bridge cannot serve, and a dataset folder that is not writable or holds episodes
    of another spec (``SettingError``, ``ModelError``, ``SpecError``, ``RecorderError``).
    """
    from ..learning.evaluation import task_mismatch
    from ..recording.recorder import DatasetWriter
    from ..settings import EPISODES
    from ..sim.tasks import TaskConfig
    from ..spec import Spec, SpecError, task_spec_name

    EPISODES.check("episodes", episodes)
    TaskConfig.load(task)
    spec = spec or task_spec_name(task)
    spec_obj = Spec.load(spec)
    problem = task_mismatch(spec_obj, task, through="ros", rate=False)
    if problem:
        raise SpecError(f"spec {spec_obj.name} {problem}")
    dataset = Path(dataset)
    # The recorder node makes the same checks, but only its log would tell why it stopped.
    DatasetWriter(dataset, spec_obj)

    from .graph import SimGraph

    own_graph = graph is None
    graph = graph or SimGraph()
    try:
        return _record(dataset, task, spec, spec_obj, episodes, mode, seed, storage, log_dir,
                       progress, episode_timeout, graph, compose)
    finally:
        if own_graph:
            graph.close()


def _record(dataset, task, spec, spec_obj, episodes, mode, seed, storage, log_dir, progress,
            episode_timeout, graph, compose=False) -> list[dict]:
    from .graphs import record_graph
    from .launcher import ProcessGroup, composable
    from ..nodes.episode_runner import EpisodeRunner, Spinner

    cameras = sorted({f.topic.strip("/").split("/")[0] for f in spec_obj.image_observations})
    with ProcessGroup(log_dir or dataset / "logs", env=graph.env) as group:
        nodes = record_graph(task, str(dataset), spec=spec, mode=mode, seed=seed,
                             storage=storage, cameras=cameras or [""])
        group.start_graph(nodes, compose=composable(nodes) if compose else ())
        # the run's own node on the run's graph (a context without signal handlers: Ctrl-C
        # stays a KeyboardInterrupt, which stops the processes)
        runner = EpisodeRunner(context=graph.context)
        spinner = Spinner(runner)
        names = []
        try:
            runner.wait_for_bridge(alive=group.check)
            # The expert drives the bridge's first episode as soon as both are up: let it end
            # before recording, so its `done` cannot stop the first recorded episode.
            if not runner.wait_settled(episode_timeout, alive=group.check):
                raise TimeoutError(f"the bridge's first episode, driven by the expert before "
                                   f"recording, did not end within {episode_timeout} s (logs "
                                   f"in {group.log_dir})")
            # that episode took the seed the bridge started with: the recorded ones are
            # seed, seed + 1, ... (as the same run records them without ROS)
            runner.seed_episodes(seed)
            for _ in range(episodes):
                names.append(start_recording(runner, group))
                outcome = runner.run_episode(episode_timeout, alive=group.check)
                if progress:
                    progress(len(names), outcome)
            wait_recorded(dataset)  # the last episode's automatic stop
            group.check()
        finally:
            spinner.stop()
            runner.destroy_node()
    entries = {e["name"]: e for e in json.loads((dataset / "index.json").read_text())["episodes"]}
    return [entries[n] for n in names]
