"""Which command source drives the robot: the command mux's logic without ROS.

Sources are named (``expert``, ``policy``, ``human``, ...); each answers with one message per
command topic (arm, gripper). Modes:

- ``expert`` / ``policy``: that source only (any source name works as a mode).
- ``mixture``: the expert with probability ``beta``, else the policy, drawn per step or per
  episode (DAgger's beta-mixture).
- ``intervention``: the policy, except while the person holds the intervention button: then the
  ``intervention_source`` (HG-DAgger).

In ``sync`` operation (lockstep simulation) the mux waits, for each new state, until every
source in ``sync_sources`` has answered it, then forwards the chosen source's answer: the labels
of the other sources are then published, and recorded, at the same instant as the state.
Answers that name the state they answer (``pairing``: the stamp in a command's layout) are
paired by it: one naming an earlier state than the pending one is dropped, whenever it comes;
unstamped answers are paired by arrival.
A source that is not a sync source (a person's teleop, publishing at its own pace) answers
no state by name: its command counts for the pending state only when it came after the state
(the newest of each command topic). A command from before the state, however recent, is not
forwarded for it: a button held while the teleop is silent forwarded the person's last command,
maybe from long ago or from an earlier episode, for every state, recorded as the person's.
Without sync, the chosen source's messages are forwarded as they arrive.

``joy_sync`` (sync, intervention mode): the intervention button is pressed by something that
answers every state too (a scripted supervisor standing in for the person, stamping its
``sensor_msgs/Joy`` with the state's stamp): the mux then also waits for the button state of
this state's stamp, so who drives each step does not depend on message timing.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from ..pairing import layout_stamp

MODES = ("expert", "policy", "mixture", "intervention")


class MuxCore:
    def __init__(self, topics: list, sources: list, mode: str = "expert", beta: float = 1.0,
                 per: str = "step", seed: int = 0, sync_sources: list | None = None,
                 intervention_source: str = "human", joy_sync: bool = False):
        self.topics = list(topics)
        self.sources = list(sources)
        self.sync_sources = list(sync_sources if sync_sources is not None else sources)
        unknown = set(self.sync_sources) - set(self.sources)
        if unknown:
            raise ValueError(f"sync sources {sorted(unknown)} are not among the sources "
                             f"{self.sources}")
        self.intervention_source = intervention_source
        self.rng = np.random.default_rng(seed)
        self.per = per
        self.set_mode(mode, beta)
        # sync sources answer every state (a queue per topic); the others (a person's teleop)
        # publish at their own pace: their newest command, which counts for the pending state
        # only when it came after it (``_came``: the count of states in when it came)
        self.queues = {s: {t: deque(maxlen=None if s in self.sync_sources else 1)
                           for t in self.topics} for s in self.sources}
        self._states = 0           # states taken (on_state)
        self._came = {s: {t: -1 for t in self.topics} for s in self.sources
                      if s not in self.sync_sources}
        self.intervening = False
        self.joy_sync = joy_sync
        self.joy_stamp = None      # stamp of the newest button state (joy_sync)
        self._joys: dict = {}      # joy_sync: the newest button states by the stamp they answer
        self.state_stamp = None    # stamp of the pending state
        self.episode_choice = None
        self.state_pending = False
        self.forwarded = {s: 0 for s in self.sources}
        self.dropped_late = 0      # answers naming an earlier state than the pending one
        self.answers = {s: 0 for s in self.sources}  # messages taken from each source
        self._current = None       # without sync, a mixture's current draw
        # sync: the episode of each state, from its status (the bridge publishes one with every
        # state, stamped alike); once statuses come, each forward waits for its state's, so that
        # a new episode (a per-episode draw, the command filter's reset) is known exactly
        self._statuses: dict = {}
        self.status_sync = False
        self._episode_seen = None
        self.episode_started = False   # the last forward is an episode's first
        self._started = False

    def check_mode(self, mode: str, beta: float | None = None) -> None:
        """Raise ValueError (one line naming the value) for a mode or beta ``set_mode``
        refuses; changes nothing."""
        if mode not in MODES and mode not in self.sources:
            raise ValueError(f"mode must be one of {list(MODES)} or a source name, not {mode!r}")
        # the sources a mode forwards: one it does not have would leave the robot without
        # commands, with only "no answer from the chosen source" to say why
        needs = {"mixture": ["expert", "policy"],
                 "intervention": ["policy", self.intervention_source]}.get(mode, [mode])
        missing = [n for n in needs if n not in self.sources]
        if missing:
            raise ValueError(f"mode {mode!r} forwards the sources {needs}, but {missing} "
                             f"{'is' if len(missing) == 1 else 'are'} not among the sources "
                             f"{self.sources}")
        if beta is not None and not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")

    def set_mode(self, mode: str, beta: float | None = None) -> None:
        self.check_mode(mode, beta)
        if beta is not None:
            self.beta = float(beta)
        self.mode = mode
        self.episode_choice = None
        self._step_choice = None

    def new_episode(self) -> None:
        self.episode_choice = None

    def choose(self) -> str:
        """The source for this step."""
        if self.mode == "mixture":
            if self.per == "episode":
                if self.episode_choice is None:
                    self.episode_choice = "expert" if self.rng.random() < self.beta else "policy"
                return self.episode_choice
            return "expert" if self.rng.random() < self.beta else "policy"
        if self.mode == "intervention":
            return self.intervention_source if self.intervening else "policy"
        return self.mode

    # ----------------------------------------------------------------- sync operation
    def on_state(self, stamp=None) -> None:
        self.state_pending = True
        self._states += 1
        self._step_choice = None
        self.state_stamp = stamp

    def on_joy(self, pressed: bool, stamp=None) -> None:
        """The intervention button's state (``stamp``: the state it answers, with joy_sync)."""
        self.intervening = bool(pressed)
        self.joy_stamp = stamp
        if self.joy_sync and stamp is not None:
            # kept by stamp: the next episode's first button state may come before the final
            # state of this one is forwarded (its slow source's answer still out)
            self._joys[stamp] = self.intervening
            if len(self._joys) > 8:
                del self._joys[next(iter(self._joys))]

    def on_status(self, stamp, episode: str) -> None:
        """Sync: the episode of the state stamped ``stamp`` (its status message)."""
        if stamp is None:
            return
        self._statuses[stamp] = episode
        self.status_sync = True
        if len(self._statuses) > 8:
            del self._statuses[next(iter(self._statuses))]

    def on_answer(self, source: str, topic: str, msg) -> None:
        self.queues[source][topic].append(msg)
        self.answers[source] += 1
        if source in self._came:
            self._came[source][topic] = self._states

    def answered(self, source: str) -> bool:
        if source in self._came:  # (not a sync source: a command that came after the state)
            return self.state_pending and all(
                self.queues[source][t] and self._came[source][t] == self._states
                for t in self.topics)
        self._drop_stale(source)
        return all(self.queues[source][t] for t in self.topics)

    def unanswered(self) -> list:
        """The sync sources (and a mode's own source, or the intervention source while the
        button is held) that have not answered the pending state: who a waiting mux waits
        for."""
        own = [self.mode, self.intervention_source if self.mode == "intervention"
               and self.intervening else None]
        waited = self.sync_sources + [s for s in self.sources
                                      if s in own and s not in self.sync_sources]
        return [s for s in waited if not self.answered(s)]

    def missing(self) -> list:
        """Sync: what the pending state still waits for, in words: an answer from each of
        ``unanswered()``, its episode status (once statuses come), its button state
        (``joy_sync``)."""
        out = [f"answer from {s}" for s in self.unanswered()]
        if self.joy_sync and self.mode == "intervention" and \
                self.state_stamp not in self._joys and self.joy_stamp != self.state_stamp:
            out.append("intervention button state")
        if self.status_sync and self.state_stamp is not None and \
                self.state_stamp not in self._statuses:
            out.append("episode status")
        return out

    def _drop_stale(self, source: str) -> None:
        """Drop queued answers of ``source`` that name a state before the pending one."""
        if self.state_stamp is None:
            return
        for q in self.queues[source].values():
            while q and (s := _named_stamp(q[0])) is not None and s < self.state_stamp:
                q.popleft()
                self.dropped_late += 1

    def ready(self) -> list | None:
        """Sync: when the state has been answered by every sync source (and the chosen one),
        [(topic, message)] of the chosen source, with the choice in ``self.last_choice``;
        every sync source's answer is consumed. Else None."""
        if not all(self.answered(s) for s in self.sync_sources):
            return None
        if self.joy_sync and self.mode == "intervention":
            if self.state_stamp in self._joys:
                self.intervening = self._joys[self.state_stamp]
            elif self.joy_stamp != self.state_stamp:  # (unstamped: the newest button state)
                return None
        if self.status_sync and self.state_stamp is not None and \
                self.state_stamp not in self._statuses:
            return None   # its status is on the way
        return self.force()

    def force(self) -> list | None:
        """Sync timeout: forward the chosen source's answer without waiting for the others."""
        if not self.state_pending:
            return None
        episode = self._statuses.get(self.state_stamp)
        if episode is not None and episode != self._episode_seen:
            if self._episode_seen is not None:
                self.new_episode()  # (a per-episode mixture draws again, for this state)
            self._episode_seen = episode
            self._started = True
        # a mixture draws once per state: a sync timeout asking again must not draw again (that
        # would favour whichever source answered, and tie the draws to the timing)
        choice = self._step_choice or self.choose()
        if self.mode == "mixture":
            self._step_choice = choice
        if choice not in self.sources or not self.answered(choice):
            return None
        # a sync source's oldest answer is this state's; another source's newest command, which
        # came after the state (``answered``)
        at = 0 if choice in self.sync_sources else -1
        out = [(t, self.queues[choice][t][at]) for t in self.topics]
        self._clear()
        self.state_pending = False
        self._step_choice = None
        self.last_choice = choice
        self.forwarded[choice] += 1
        self.episode_started, self._started = self._started, False
        return out

    def _clear(self) -> None:
        """After a forward, drop what the sync sources queued for this state or none: leftovers
        (a late answer after a timeout, an extra command) are stale, and dropping them keeps
        every later state paired with its own answers. An answer naming a later state is kept:
        within an episode the robot publishes the next state only once it has the forwarded
        command, but at an episode's end it starts the next episode without executing the
        final state's answer, and a fast source may answer the new episode's first state
        before a slow one answers the final state (and before the mux sees the new state)."""
        now = self.state_stamp
        for s in self.sync_sources:
            for q in self.queues[s].values():
                keep = [] if now is None else [
                    m for m in q if (named := _named_stamp(m)) is not None and named > now]
                q.clear()
                q.extend(keep)

    # ----------------------------------------------------------------- without sync
    def passthrough(self, source: str) -> bool:
        """Without sync: forward this source's message now?"""
        return source == self.choose_current()

    def choose_current(self) -> str:
        if self.mode == "mixture":
            if self._current is None:
                self.redraw()
            return self._current
        return self.choose()

    def redraw(self) -> None:
        """Without sync, mixture per step: a new draw every control period."""
        self._current = self.choose()


class StatusGate:
    """Without sync: when a command may be forwarded, so that a new episode is known before
    a command of it passes the action filter (the filter counts from the measured joints again
    after a new episode: a simulated robot is put back).

    The bridge publishes an episode status with each state, stamped alike, but the mux takes
    the states, the statuses and the commands as they come. Once a status has come stamped
    like a state (statuses that come with the states: ``paired``), a command waits while the
    newest state's status is not in, while the state it names (its layout's stamp,
    ``pairing``) is newer than the newest status, and, after a new episode, while the
    episode's first state is not in (``needs_state``: the filter's reference). Statuses that
    never share a state's stamp (a publisher of one status per episode, on another clock) make
    nothing wait: the robot never stalls waiting for a status that is not coming.
    A command naming a state before the episode's start answers an earlier episode: dropped.
    The newest waiting command of each topic is kept, in the order they came."""

    def __init__(self, needs_state: bool = True):
        self.needs_state = needs_state
        self.state = None      # stamp (ns) of the newest state
        self.status = None     # stamp of the newest status (None: none heard: nothing waits)
        self.started = None    # stamp of the status that started the current episode
        self.paired = False    # a status has come stamped like a state: one comes with each
        self.held: dict = {}   # topic -> (source, message, the stamp it names)
        self.held_since = None  # monotonic time the oldest waiting command came
        self.held_total = 0    # commands that waited
        self.stale = 0         # commands dropped as answers to an earlier episode

    def on_state(self, stamp: int) -> None:
        if self.state is None or stamp > self.state:
            self.state = stamp
        self.paired = self.paired or stamp == self.status

    def on_status(self, stamp: int, new_episode: bool) -> None:
        if new_episode:
            self.started = stamp
        if self.status is None or stamp > self.status:
            self.status = stamp
        self.paired = self.paired or stamp == self.state

    def stale_answer(self, named: int | None) -> bool:
        """Does a command naming ``named`` answer a state before the episode's start?"""
        return self.paired and named is not None and self.started is not None and \
            named < self.started

    def waits(self, named: int | None = None) -> bool:
        """Must a command (naming the state ``named``, or None) wait?"""
        if not self.paired:
            return False
        if self.state is not None and self.state > self.status:
            return True   # the newest state's status is not in: it may start an episode
        if named is not None and named > self.status:
            return True   # it answers a state whose status is not in
        return self.needs_state and self.started is not None and \
            (self.state is None or self.state < self.started)

    def hold(self, source: str, topic: str, msg, named: int | None, now: float) -> None:
        self.held.pop(topic, None)  # (a newer command of the topic replaces it, in order)
        self.held[topic] = (source, msg, named)
        self.held_total += 1
        if self.held_since is None:
            self.held_since = now

    def release(self) -> list:
        """[(topic, source, message)] of the waiting commands that may go now, in the order
        they came (the rest keep waiting); answers to an earlier episode dropped."""
        out = []
        for topic, (source, msg, named) in list(self.held.items()):
            if self.stale_answer(named):
                self.stale += 1
            elif self.waits(named):
                continue
            else:
                out.append((topic, source, msg))
            del self.held[topic]
        if not self.held:
            self.held_since = None
        return out


def _named_stamp(msg) -> int | None:
    """The state (stamp, ns) a command names in its layout (``pairing``), or None."""
    layout = getattr(msg, "layout", None)
    return None if layout is None else layout_stamp(layout)
