"""Episode recorder node: one rosbag2 bag (MCAP by default) per episode in a dataset folder.

Records the spec's topics, plus any topics named in `topics` (any message type), as
serialized messages stamped with the node clock (simulation time under `use_sim_time`).
Services (std_srvs/Trigger): ~/start, ~/stop (stop and keep), ~/discard. With
`auto_stop_on_done`, the episode stops when the task's `episode/status` says done, once the
commands answering the final state are in (the spec's action topics), and the final state's
message on each topic that carries every state (at most `answer_timeout` s), and at least
`stop_grace` s after it: in lockstep a controller answers the final state after
its status (the policy node waits for a state's status before it answers), and an answer later
than a fixed grace was lost under load. Under simulated time (the bridge stamps each status like
its state), an episode whose final state's messages never came (lost on the way, or later than
that wait) is kept with status ``incomplete``: its bag lacks them, maybe more, and the dataset
builder leaves it out unless asked for.

An episode starts only once every recorded topic has a publisher matched to this node's
subscription, and the publishers that report their matched subscriptions on /diagnostics (the
suite's nodes: ``common.MatchedReport``) count this node's (matching is per side: a message
published before the publisher's side matched is lost to the bag); subscriptions take the
reliability and durability of the topic's publishers. The recorded topics are not run by the
executor: a drain thread takes every message waiting on them at most every 10 ms (serialized,
with the middleware's reception stamp) and hands them to the recorder in reception order, one
batch per pass; a writer thread writes. SIGINT/SIGTERM finish the open bag, and end a ~/start
still waiting for its topics (refused).

The episode settings (``task``, ``operator``, ``notes``, ``auto_stop_on_done``, ``stop_grace``,
``answer_timeout``) can be changed at run time: an episode keeps those of its ~/start, a change
applies from the next one. ``discovery_timeout`` applies from the next ~/start. The rest is
read-only (the dataset, what is recorded and how).
"""
from __future__ import annotations

import os
import signal
import threading
import time

from .common import (Param, _launcher_parent, checked_subscription, declare_all, full_name,
                     matched_reports, run, stamp_ns, take_message, to_sec, uncounted)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.callback_groups import CallbackGroup  # noqa: E402
from rclpy.guard_condition import GuardCondition  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile,  # noqa: E402
                       QoSReliabilityPolicy)
from std_srvs.srv import Trigger  # noqa: E402

from ..observation import message_class  # noqa: E402
from ..recording.final_state import FinalState  # noqa: E402
from ..recording.heap import keep_freed_memory  # noqa: E402
from ..recording.latched import Replays  # noqa: E402
from ..recording.recorder import DatasetWriter, Recorder, RecorderError  # noqa: E402
from ..spec import Spec  # noqa: E402


def _match_qos(infos) -> QoSProfile:
    """Reliable/transient-local only when every publisher offers it (else we could not match).

    KEEP_ALL: a keep-last reader history lost 1 kHz joint states under load (measured)."""
    profiles = [i.qos_profile for i in infos]
    reliable = all(p.reliability == QoSReliabilityPolicy.RELIABLE for p in profiles)
    latched = all(p.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
    return QoSProfile(
        history=QoSHistoryPolicy.KEEP_ALL, depth=1000,
        reliability=QoSReliabilityPolicy.RELIABLE if reliable else QoSReliabilityPolicy.BEST_EFFORT,
        durability=QoSDurabilityPolicy.TRANSIENT_LOCAL if latched else QoSDurabilityPolicy.VOLATILE)


def _bag_qos(profile: QoSProfile):
    """A publisher's QoS -> the description stored with the topic in metadata.yaml."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    def enum(cls, value, default):
        try:
            return cls(int(value))
        except ValueError:
            return default

    return Qos(enum(QosHistory, profile.history, QosHistory.UNKNOWN), profile.depth,
               enum(QosReliability, profile.reliability, QosReliability.UNKNOWN),
               enum(QosDurability, profile.durability, QosDurability.UNKNOWN),
               QosTime(0, 0), QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


class _TakenByDrain(CallbackGroup):
    """The recorded subscriptions' group: the executor never waits on them nor takes from them
    (``Drain`` does)."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


class Drain:
    """Takes the recorded topics' messages off their subscriptions in batches.

    An executor costs about 0.2 ms of Python per message it hands to a callback (it rebuilds its
    wait set for every wake-up); at 1 kHz that was most of the recorder's CPU. Here a thread
    waits on the recorded subscriptions alone (one wait set, kept) and, when any has data,
    takes every message waiting on each of them (serialized bytes and the message info) and
    passes them on in one call. A pass comes at most every ``period`` s (the recorder's
    ``DRAIN_PERIOD``): at 1 kHz of joint states a wake-up per message cost the recorder more than
    the messages' writing (``bench/recorder_throughput.py``: 6.8 CPU-s per GB against 5.3 with
    passes 10 ms apart). Meanwhile the messages wait in their readers (KEEP_ALL); the log time
    is the middleware's reception stamp, so the wait does not change it.

    Reception order: a pass first notes the time, and everything received before it is already
    waiting and taken in this pass; the messages taken that were received after it are held for
    the next pass, so the batches, sorted by reception stamp, follow one another in reception
    order. Except for a large message the middleware reassembles from fragments: it carries the
    first fragment's stamp and is taken once complete, possibly after later messages were
    passed on (seen with Fast DDS's default segment, where first deliveries of camera frames
    failed and were repaired). Bag readers sort by log time (MCAP's chunk indexes), so only the
    file order differs.

    ``offer(batch)`` gets ``[(received_ns, topic, data, info), ...]``; ``received_ns`` is the
    middleware's reception stamp (system clock), or the time of the take where it has none.
    """

    def __init__(self, offer, context, log, timeout: float = 0.1, period: float = 0.0):
        self.offer = offer
        self.period = period
        self.log = log  # an error of a pass (the thread goes on)
        self.context = context
        self.timeout_ns = int(timeout * 1e9)
        self.subs: dict = {}  # topic -> subscription (added by discovery, never removed)
        self._held: list = []
        self._lock = threading.Lock()  # one pass at a time (the thread, or a flush)
        self._stop = threading.Event()
        self._wake = GuardCondition(None, None, context=context)
        self._thread = threading.Thread(target=self._run, daemon=True, name="drain")
        self._thread.start()

    def add(self, topic: str, sub) -> None:
        self.subs[topic] = sub
        self._wake.trigger()  # the thread waits on it from now on

    def _run(self) -> None:
        import contextlib

        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        waited: tuple = ()
        handles = wait_set = None
        last = 0.0
        with contextlib.ExitStack() as keep:
            while not self._stop.is_set():
                subs = tuple(self.subs.values())
                if subs != waited or wait_set is None:
                    keep.close()
                    keep.enter_context(self.context.handle)
                    keep.enter_context(self._wake.handle)
                    handles = [sub.handle for sub in subs]
                    for handle in handles:
                        keep.enter_context(handle)
                    wait_set = _rclpy.WaitSet(len(handles), 1, 0, 0, 0, 0, self.context.handle)
                    waited = subs
                wait_set.clear_entities()
                for handle in handles:
                    wait_set.add_subscription(handle)
                wait_set.add_guard_condition(self._wake.handle)
                wait_set.wait(self.timeout_ns)
                if self.period:  # a pass at most every period: its messages wait in DDS
                    rest = last + self.period - time.monotonic()
                    if rest > 0 and self._stop.wait(rest):
                        break
                if self._stop.is_set():
                    break
                last = time.monotonic()
                try:
                    self.take(flush=False)
                except Exception as exc:  # noqa: BLE001 - never a silent end of the recording
                    self.log(f"taking the recorded messages failed: {type(exc).__name__}: "
                             f"{exc}")
                    self._stop.wait(0.1)

    def take(self, flush: bool) -> None:
        """One pass; ``flush``: pass on everything taken, the held messages included (a stop:
        what was received up to now belongs to the episode)."""
        with self._lock:
            mark = time.time_ns()
            batch, self._held = self._held, []
            for topic, sub in tuple(self.subs.items()):
                handle, mtype = sub.handle, sub.msg_type
                with handle:
                    while True:
                        got = handle.take_message(mtype, True)
                        if got is None:
                            break
                        data, info = got
                        batch.append((info["received_timestamp"] or time.time_ns(), topic,
                                      data, info))
            if not batch:
                return
            batch.sort(key=_first)
            if not flush and batch[-1][0] > mark:
                cut = next(i for i, item in enumerate(batch) if item[0] > mark)
                batch, self._held = batch[:cut], batch[cut:]
            if batch:
                self.offer(batch)

    def close(self) -> None:
        """Stop the thread; a last pass takes what is still waiting."""
        self._stop.set()
        self._wake.trigger()
        self._thread.join()
        self.take(flush=True)
        self._wake.destroy()


DRAIN_PERIOD = 0.01  # s between the drain's passes, at most
ANSWER_LINGER = 1.0  # s the process stays after answering a start the shutdown ended
# s a publisher first seen by a ~/start may take to report its matched subscriptions (a node of
# the suite reports within 0.1 s of coming up and of a change, and every second, once this
# node's /diagnostics subscription has matched its publisher): until then it may be one that
# reports and has not yet, and what it publishes may miss this node's new subscriptions
REPORT_GRACE = 2.0


def _first(item):
    return item[0]


class EpisodeRecorder(Node):
    NODE_NAME = "episode_recorder"
    PARAMETERS = (
        Param("dataset", "datasets/demos", "dataset folder (created if missing)",
              read_only=True),
        Param("spec", "", "observation/action spec whose topics are recorded (config/specs "
              "name or path); empty: only `topics`", read_only=True),
        Param("topics", [""], "more topics to record (any message type)", read_only=True),
        Param("storage", "mcap", "bag storage", read_only=True, choices=("mcap", "sqlite3")),
        Param("task", "", "episode metadata: the task (the task status overrides it); a change "
              "applies from the next episode"),
        Param("operator", "", "episode metadata: who demonstrated (a change applies from the "
              "next episode)"),
        Param("notes", "", "episode metadata: free text (a change applies from the next "
              "episode)"),
        Param("auto_stop_on_done", False, "stop (and keep) the episode when the task's status "
              "says done (a change applies from the next episode)"),
        Param("stop_grace", 0.25, "auto stop: seconds (wall) to keep recording after done, for "
              "messages of the last instant still in flight on other topics (a change applies "
              "from the next episode)", min_value=0.0, max_value=10.0),
        Param("answer_timeout", 2.0, "auto stop: the longest wait (seconds, wall) after done "
              "for a command answering the final state on each of the spec's action topics (one "
              "naming that state, or one without a name received after the status), and for the "
              "final state's message on each topic that carries every state (the spec's stamped "
              "observations, /clock); a change applies from the next episode",
              min_value=0.0, max_value=60.0),
        Param("status_topic", "/episode/status", "the task's episode status "
              "(diagnostic_msgs/DiagnosticArray)", read_only=True),
        Param("discovery_timeout", 10.0, "seconds ~/start waits for every topic to be matched "
              "(a change applies from the next ~/start; SIGINT/SIGTERM end the wait)",
              min_value=0.0, max_value=600.0),
        Param("log_time", "auto", "time each message is logged at: receive (the recorder's "
              "clock at reception, as rosbag2), publication (the newest header stamp among "
              "recorded messages published before it: exact pairing of commands with the states "
              "they answer; needs the publishers' clocks synchronized), auto (publication under "
              "use_sim_time, else receive)", read_only=True,
              choices=("auto", "receive", "publication")),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        p = declare_all(self, self.PARAMETERS)
        keep_freed_memory()  # frames and chunk buffers reuse their memory (recording.heap)
        if not p["dataset"].strip():
            raise ValueError(f"parameter dataset={p['dataset']!r}: an empty path (give the "
                             "dataset folder's path)")
        self.dataset_dir = p["dataset"]
        # the settings a ~/start takes (RUN_TIME_SETTINGS), as set now: changed by
        # _after_set_params (validated before by declare_all's check and the descriptors'
        # ranges); an episode keeps those of its start (_Episode)
        self.settings = {k: p[k] for k in RUN_TIME_SETTINGS}
        self.add_post_set_parameters_callback(self._after_set_params)
        self.episode = _Episode()  # the running (or last) episode's settings
        self.status_topic = p["status_topic"]
        # the first SIGINT/SIGTERM (stop_requested), or the suite's launcher gone: a ~/start
        # waiting for its topics gives up (the spin loop sees neither until it returns)
        self._shutting_down = False
        self._launcher = _launcher_parent()
        self._refused_at = None  # monotonic time of a start refused for the shutdown
        self.spec = Spec.load(p["spec"]) if p["spec"] else None
        self.wanted = dict(self.spec.topics()) if self.spec else {}
        for topic in (t for t in p["topics"] if t):
            self.wanted.setdefault(topic if topic.startswith("/") else "/" + topic, None)
        if not self.wanted:
            raise ValueError("nothing to record: set `spec` or `topics`")
        storage, log_time = p["storage"], p["log_time"]
        if log_time == "auto":
            log_time = "publication" if self.get_parameter("use_sim_time").value else "receive"
        self.log_time = log_time
        self.dataset = DatasetWriter(self.dataset_dir, self.spec)
        # the topics that carry every state, once each (the spec's stamped low-dimensional
        # observations, a recorded /clock): what a message naming no state waits for (log time
        # publication), and, with auto stop, the final state's messages the stop waits for
        per_state = {
            t for t, ty in self.wanted.items() if ty == "rosgraph_msgs/msg/Clock" or (
                self.spec and t in {f.topic for f in self.spec.low_dim_observations}
                and "header" in message_class(ty).get_fields_and_field_types())}
        self.recorder = Recorder(self.dataset, storage, log=self.get_logger().error,
                                 log_time=log_time, per_state=sorted(per_state))
        self.subs: dict = {}
        self.qos: dict = {}
        self._status = None
        self._running_episode = None
        self._stop_lock = threading.Lock()
        self._started_ns = 0  # wall time (ns) of the running episode's ~/start
        self._drained = _TakenByDrain()
        self.replays = Replays()
        # auto stop: the action topics whose answers to an episode's final state are awaited
        # (topic -> whether the state is named by a header stamp), and the newest command
        # taken on each: (its bytes, reception ns), read only by the stop's wait
        self._action_topics = {t: not ty.endswith("MultiArray")
                               for t, ty in self.spec.action_topics().items()} \
            if self.spec else {}
        self._state_topics = frozenset(per_state) if self._action_topics else frozenset()
        # those of the running episode (none without auto stop: set at each ~/start), and the
        # topics that carry every state, whose message of the final state is awaited as well:
        # a recorder that fell behind gets the samples its transport dropped sent again, later
        # (a test run's bag ended without the final 136 poses); the newest taken on each
        self._final = FinalState()
        self._receive_clock = log_time == "receive" and self.get_parameter("use_sim_time").value
        self.drain = Drain(self._offer_batch, self.context,
                           lambda text: self.get_logger().error(text, throttle_duration_sec=5.0),
                           period=DRAIN_PERIOD)
        checked_subscription(self, DiagnosticArray, self.status_topic, self._on_status, 10,
                             with_info=True)
        # the publishers' reports of their matched subscriptions (common.MatchedReport), read
        # only by ~/start (taken there, never by the executor; the newest of each is kept)
        self._reports_sub = self.create_subscription(
            DiagnosticArray, "/diagnostics", _never_called, QoSProfile(
                depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                history=QoSHistoryPolicy.KEEP_LAST), callback_group=self._drained)
        self._reports: dict = {}  # (node's full name, topic) -> matched subscriptions
        self._first_seen: dict = {}  # node's full name -> when a ~/start first saw it publish
        self.create_service(Trigger, "~/start", self._srv_start)
        self.create_service(Trigger, "~/stop", lambda req, resp: self._srv_stop(resp, True))
        self.create_service(Trigger, "~/discard", lambda req, resp: self._srv_stop(resp, False))
        # On the node's clock, on purpose: under simulated time it does not fire before the
        # simulation runs. A lockstep controller answers each state once, as soon as any reader
        # of its command topic is matched; a recorder subscribed earlier can be that reader
        # before the bridge is, and the bridge then never gets the first state's answer (seen:
        # a recording pipeline whose first episode never ended). ~/start subscribes anyway.
        self.create_timer(0.5, self._discover)
        self.get_logger().info(f"recording {sorted(self.wanted)} into {self.dataset_dir} "
                               f"({storage}, log time: {log_time})")

    # ----------------------------------------------------------------- parameters
    def _after_set_params(self, params) -> None:
        """A run-time setting changed (accepted): the next ~/start takes it."""
        for param in params:
            if param.name in self.settings:
                self.settings[param.name] = param.value

    def stop_requested(self) -> None:
        """The first SIGINT/SIGTERM (in its handler, ``common.ShutdownRequest``): a ~/start
        waiting for its topics ends at its next look (every 50 ms at most), refused; the node
        closes once its spin loop ends. A flag only: the handler runs between two bytecodes of
        the main thread, which may hold any lock."""
        self._shutting_down = True

    def _stopping(self) -> bool:
        if self._launcher is not None and os.getppid() != self._launcher:
            self._shutting_down = True
        return self._shutting_down

    # ----------------------------------------------------------------- discovery
    def _discover(self) -> list:
        """Subscribe to the wanted topics that have publishers; return those still missing."""
        if len(self.subs) == len(self.wanted):
            return []  # all subscribed: no graph query (the timer keeps calling)
        graph = dict(self.get_topic_names_and_types())
        missing = []
        for topic, mtype in self.wanted.items():
            if topic in self.subs:
                continue
            infos = self.get_publishers_info_by_topic(topic)
            if not infos:
                missing.append(topic)
                continue
            types = graph.get(topic, [])
            mtype = mtype or (types[0] if types else None)
            if mtype is None or (types and mtype not in types):
                self.get_logger().error(f"{topic}: published as {types}, spec says {mtype}",
                                        throttle_duration_sec=10.0)
                missing.append(topic)
                continue
            self.wanted[topic] = mtype
            qos = _match_qos(infos)
            self.qos[topic] = infos[0].qos_profile  # what `ros2 bag play` should offer
            if qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL:
                self.replays.subscribed(topic, time.time_ns())
            # taken by the drain thread, never by the executor (the callback is not called)
            self.subs[topic] = self.create_subscription(
                message_class(mtype), topic, _never_called, qos, raw=True,
                callback_group=self._drained)
            self.drain.add(topic, self.subs[topic])
        return missing

    def _offer_batch(self, batch: list) -> None:
        """A drained batch to the recorder, in reception order. A message received before
        ~/start (still waiting while the start ran) is not part of the episode, nor is the
        history a latched publisher sends a subscription made at ~/start (``latched.Replays``).
        Log time ``receive``: the middleware's reception stamp (the system clock, which is ROS
        time); under simulation time, the node clock when the message was taken."""
        batch = self.replays.drop_replayed(batch)
        now = self.get_clock().now().nanoseconds if self._receive_clock else 0
        self._final.offer(batch)  # stamps are read only while a stop waits
        self.recorder.offer_many([(topic, now or received, data, info["source_timestamp"])
                                  for received, topic, data, info in batch
                                  if not self._before_start(info)])

    def _before_start(self, info) -> bool:
        received = info["received_timestamp"]  # 0 where the RMW does not stamp receptions
        return 0 < received < self._started_ns

    def _unmatched(self) -> list:
        return [t for t in self.wanted
                if t not in self.subs or self.subs[t].get_publisher_count() == 0]

    def _uncounted(self) -> list:
        """The recorded topics' publishers that report their matched subscriptions and count
        fewer than this node sees (``common.uncounted``: its own included), and those first
        seen less than ``REPORT_GRACE`` s ago that have not reported yet (a bridge that has just
        come up: its first report is on its way, and its first states could miss this node).
        Publishers that do not report are waited for that long once, then not."""
        handle = self._reports_sub.handle
        with handle:  # (raw: bytes that are no message are said, not lost without a word)
            while (got := handle.take_message(DiagnosticArray, True)) is not None:
                msg = take_message(self, got[0], "diagnostic_msgs/msg/DiagnosticArray",
                                   "/diagnostics", DiagnosticArray)
                if msg is not None:
                    matched_reports(msg, self._reports)
        now = time.monotonic()
        reported = {name for name, _ in self._reports}
        fresh = []
        for topic in self.subs:
            for info in self.get_publishers_info_by_topic(topic):
                name = full_name(info)
                seen = self._first_seen.setdefault(name, now)
                if name not in reported and now - seen < REPORT_GRACE:
                    fresh.append(f"{topic}: {name} has not reported yet")
        return uncounted(self, self.subs, self._reports) + fresh

    # ----------------------------------------------------------------- status
    def _on_status(self, msg: DiagnosticArray, info) -> None:
        if not msg.status:
            return
        values = {kv.key: kv.value for kv in msg.status[0].values}
        values["task"] = msg.status[0].hardware_id
        self._status = (to_sec(msg.header.stamp), values)
        # A status received before ~/start (still queued while the start waited for its
        # topics) is the past: the `done` of an episode that ran then must not stop this one.
        if not (self.episode.auto_stop and self.recorder.recording) or \
                self._before_start(info):
            return
        # Stop when an episode seen running during this recording is done (not on a stale
        # `done` of the episode before, which a real-time bridge keeps publishing until reset).
        if values.get("done") == "false":
            self._running_episode = values.get("episode")
        elif (values.get("done") == "true" and self._running_episode is not None
              and values.get("episode") == self._running_episode):
            self._running_episode = None  # one stop per episode
            seen = info["received_timestamp"] or time.time_ns()
            threading.Thread(target=self._auto_stop_after, daemon=True,
                             args=(stamp_ns(msg.header.stamp), seen, self._started_ns,
                                   self.episode)).start()

    # ----------------------------------------------------------------- services
    def _srv_start(self, req, resp):
        settings = dict(self.settings)  # this start's (a change meanwhile: the next one's)
        timeout = settings["discovery_timeout"]
        deadline = time.monotonic() + timeout
        told = False
        while True:
            if self._stopping():
                return self._refused_for_shutdown(resp)
            self._discover()
            unmatched = self._unmatched()
            if not unmatched or time.monotonic() >= deadline:
                break
            if not told:  # a start may wait long (up to 600 s): say for what
                told = True
                self.get_logger().info(f"~/start: waiting up to {timeout} s for a matched "
                                       f"publisher on {unmatched}")
            time.sleep(0.05)
        if unmatched:
            resp.success = False
            why = "; ".join(f"{t}: " + ("subscribed, no publisher matched" if t in self.subs
                                         else "no publisher discovered") for t in unmatched)
            resp.message = (f"not starting: no matched publisher within "
                            f"{timeout} s for {unmatched} ({why})")
            if any(t not in self.subs for t in unmatched):
                # a node seen here (its graph announcement matched) whose publisher is not: the
                # discovery of that publisher went missing; a node not seen: not running, or
                # nothing of its process discovered
                nodes = sorted(f"{ns.rstrip('/')}/{n}"
                               for n, ns in self.get_node_names_and_namespaces())
                resp.message += f"; the nodes this recorder sees: {', '.join(nodes) or 'none'}"
            self.get_logger().error(resp.message)
            return resp
        # matched on this side; now on the publishers' (those that say)
        while (short := self._uncounted()) and time.monotonic() < deadline:
            if self._stopping():
                return self._refused_for_shutdown(resp)
            time.sleep(0.01)
        if self._stopping():
            return self._refused_for_shutdown(resp)
        if short:
            self.get_logger().warning(
                f"starting although publishers count fewer subscriptions than this node sees "
                f"after {timeout} s (a reader they cannot match? their messages "
                f"may miss the episode's start): {'; '.join(short)}")
        started = time.time_ns()  # the DDS reception stamps' clock
        # every key in every entry, empty when not given
        meta = {k: settings[k] for k in ("task", "operator", "notes")}
        if self.spec:
            meta.update(spec=self.spec.name, spec_fingerprint=self.spec.fingerprint())
        try:
            name = self.recorder.start(
                dict(self.wanted), meta, qos={t: [_bag_qos(q)] for t, q in self.qos.items()},
                required=[f.topic for f in self.spec.fields] if self.spec else ())
        except RecorderError as exc:
            resp.success, resp.message = False, str(exc)
            self.get_logger().error(resp.message)
            return resp
        # only now: a refused start leaves the running one alone
        auto = settings["auto_stop_on_done"]
        self.episode = _Episode(auto, settings["stop_grace"], settings["answer_timeout"],
                                settings["task"],
                                dict(self._action_topics) if auto else {},
                                self._state_topics if auto else frozenset())
        self._final.start(self.episode.answering, self.episode.per_state)
        self._started_ns = started
        self._running_episode = None
        resp.success, resp.message = True, f"recording {name}"
        self.get_logger().info(resp.message)
        return resp

    def _refused_for_shutdown(self, resp):
        resp.success = False
        resp.message = "not starting: the recorder is shutting down (SIGINT/SIGTERM)"
        self.get_logger().warning(resp.message)
        self._refused_at = time.monotonic()  # close() gives the answer time to arrive
        return resp

    def _srv_stop(self, resp, keep: bool):
        try:
            entry = self._stop_episode(keep)
        except RecorderError as exc:
            resp.success, resp.message = False, str(exc)
            return resp
        resp.success = entry["status"] in ("ok", "discarded")
        resp.message = self._summary(entry)
        return resp

    def _auto_stop_after(self, final: int, seen: int, started: int,
                         episode: "_Episode") -> None:
        """Stop ``stop_grace`` s after the final status, or later, once every action topic has
        answered the final state (at most ``answer_timeout`` s after the status); not an episode
        started since (``started``: the ~/start of the one to stop, ``episode``: its
        settings)."""
        t0 = time.monotonic()
        time.sleep(episode.stop_grace)
        missing = list(episode.answering)
        lacking = sorted(episode.per_state)
        limit = episode.answer_timeout
        while True:
            late = time.monotonic() - t0 >= limit
            if late:
                # what the middleware holds for this node counts, taken or not (the drain's
                # passes come every few ms; a starved process takes them later)
                self.drain.take(flush=True)
            missing = [t for t in missing if not self._final.answered(t, final, seen)]
            lacking = [t for t in lacking if not self._final.reached(t, final)]
            if not (missing or lacking) or late:
                break
            time.sleep(0.005)
        if missing:
            self.get_logger().warning(
                f"episode end: no command answering the final state ({final * 1e-9:.3f} s) on "
                f"{', '.join(missing)} within answer_timeout ({limit} s): the bag "
                f"ends without it")
        incomplete = None
        if lacking:
            text = (f"no message of the final state ({final * 1e-9:.3f} s) on "
                    f"{', '.join(lacking)} within answer_timeout ({limit} s)")
            if self.get_parameter("use_sim_time").value:
                # a simulation's status is stamped like its state, published after it, and it
                # came: the state's messages were lost on the way here (or come later than
                # the wait); the bag lacks them, maybe more: not an episode to train on as it
                # is. (A robot's status may keep a clock of its own: there, only said.)
                incomplete = text
            self.get_logger().warning(f"episode end: {text}: the bag ends without it"
                                      + (", status incomplete" if incomplete else ""))
        self._auto_stop(started, incomplete)

    def _auto_stop(self, started: int, incomplete: str | None = None) -> None:
        try:
            self._stop_episode(True, started, incomplete)
        except RecorderError as exc:  # stopped by a service call meanwhile
            self.get_logger().info(f"auto stop: {exc}")

    def _stop_episode(self, keep: bool, started: int | None = None,
                      incomplete: str | None = None) -> dict:
        with self._stop_lock:
            if not self.recorder.recording:
                raise RecorderError("no episode is being recorded")
            if started is not None and started != self._started_ns:
                raise RecorderError("the episode it was for was stopped; another one runs")
            self.drain.take(flush=True)  # what was received until now belongs to the episode
            for topic, n in sorted(self.replays.take_skipped().items()):
                self.get_logger().info(
                    f"{topic}: {n} message(s) published before the episode, sent from the "
                    "publisher's history when this recorder subscribed: not recorded")
            self._running_episode = None
            meta = {}
            if self._status is not None:
                values = self._status[1]
                meta = {"success": values.get("success") == "true",
                        "seed": int(values["seed"]) if values.get("seed", "None") != "None"
                        else None, "task": values.get("task") or self.episode.task}
            entry = self.recorder.stop(keep, meta, incomplete=incomplete)
        if entry["status"] in ("ok", "discarded"):
            self.get_logger().info(self._summary(entry))
        else:
            self.get_logger().error(self._summary(entry))
        return entry

    @staticmethod
    def _summary(entry: dict) -> str:
        counts = ", ".join(f"{t} {entry['counts'].get(t, 0)}/{n}"
                           for t, n in sorted(entry.get("received", {}).items()))
        text = f"{entry['name']} {entry['status']}: written/received {counts}"
        if entry.get("dropped"):
            text += f"; dropped (queue full) {entry['dropped']}"
        if entry.get("error"):
            text += f"; error: {entry['error']}"
        if entry.get("incomplete"):
            text += f"; lacks: {entry['incomplete']}"
        return text

    def close(self) -> None:
        """On shutdown (SIGINT/SIGTERM): finish the open episode's bag, status ``interrupted``
        (the episode did not end: no full demonstration to train on unless asked for)."""
        self.drain.close()
        if self.recorder.recording:
            entry = self.recorder.stop(True, interrupted=True)
            print(f"[{self.NODE_NAME}] shutdown: {self._summary(entry)}", flush=True)
        if self._refused_at is not None:
            # The answer of a start the shutdown ended went out just before: the process
            # leaving at once lost it now and then (the client then waits for its own timeout,
            # seen under load); the middleware cannot say when it has arrived.
            rest = self._refused_at + ANSWER_LINGER - time.monotonic()
            if rest > 0:
                time.sleep(rest)


# the parameters a ~/start takes as they are then (the others are read-only)
RUN_TIME_SETTINGS = ("task", "operator", "notes", "auto_stop_on_done", "stop_grace",
                     "answer_timeout", "discovery_timeout")


class _Episode:
    """An episode's settings, as they were at its ~/start: with auto stop, the action topics
    whose answers to the final state are awaited (topic -> named by a header stamp) and the
    topics that carry every state."""

    __slots__ = ("auto_stop", "stop_grace", "answer_timeout", "task", "answering", "per_state")

    def __init__(self, auto_stop: bool = False, stop_grace: float = 0.0,
                 answer_timeout: float = 0.0, task: str = "", answering: dict | None = None,
                 per_state: frozenset = frozenset()):
        self.auto_stop = auto_stop
        self.stop_grace = stop_grace
        self.answer_timeout = answer_timeout
        self.task = task
        self.answering = answering or {}
        self.per_state = per_state


def _never_called(data, info) -> None:
    raise AssertionError("the recorded topics are taken by the drain thread")


def main(args=None) -> int:
    # A file-size limit must end the episode with an error, not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # The single-threaded executor (services, the status): it hands callbacks the message info
    # (reception stamps) that the status's start check needs, which the events executor
    # cannot. The recorded topics never reach it (Drain): when they did, the events executor
    # of this rclpy left 36 of 3600 frames untaken (bench/recorder_throughput.py, 60 s), and
    # the single-threaded one cost about 0.2 ms per message.
    return run(EpisodeRecorder, args, executor="single")


if __name__ == "__main__":
    raise SystemExit(main())
