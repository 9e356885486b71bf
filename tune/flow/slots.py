"""The full evaluations beside the search, in slots the search never needs.

A full evaluation (the random reference, the top β windows, the winner) is known long before
the search ends and takes several trials' time. Submitted to Ray at once, it takes a trial
slot whenever one is free, and a phase that wants its ``--max-concurrent`` trials a moment
later waits for it: finals would delay the search. So they wait on the driver, in
:class:`FinalSlots`, and start only in the slots the search leaves: while it may still start
trials, the cluster's trial slots less the search's own (``max_concurrent`` trials, each with
its SeqMatch stage slots); once the driver waits for them (after the last phase, or each IPC's
with ``--final-after-phases``), every slot. A thread on the driver starts the next one as
soon as one ends.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from selmatch_tune.settings.config import SearchConfig


@dataclass
class Final:
    """One full evaluation: queued, then running (``ref``), then done (:meth:`result`)."""

    pool: FinalSlots
    args: tuple[Any, ...]
    ref: Any = None

    def result(self) -> dict[str, Any]:
        """Its result; the driver waits, so the evaluations queued may take every slot."""
        return self.pool.wait(self)


class FinalSlots:
    """Full evaluations (``task``: a Ray remote function with a trial's resources) started in
    the slots the search leaves; ``slots`` (default: from the cluster now) and ``reserved``
    (default: the search's) in trials."""

    def __init__(
        self,
        config: SearchConfig,
        task: Any,
        *,
        slots: Callable[[], int] | None = None,
        reserved: int | None = None,
    ) -> None:
        from selmatch_tune.cluster.ray_cluster import trial_slots

        self.task = task
        self.slots = slots or (lambda: trial_slots(config))
        self.reserved = (
            config.max_concurrent * (1 + config.stage_slots) if reserved is None else reserved
        )
        self.queued: deque[Final] = deque()
        self.running: list[Final] = []
        self.waiting = 0  # driver calls blocked in wait(): the search starts nothing then
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.started: list[int] = []  # how many ran at once when each started (for tests)

    def submit(self, *args: Any) -> Final:
        """Queue an evaluation (``task``'s arguments); it starts when a slot is free."""
        final = Final(self, args)
        with self.lock:
            self.queued.append(final)
        self.pump()
        return final

    def capacity(self) -> int:
        """How many may run now: the search's slots stay free while it may start trials."""
        reserved = 0 if self.waiting else self.reserved
        return max(0, self.slots() - reserved)

    def pump(self) -> None:
        """Start queued evaluations while there is room; forget the finished ones."""
        with self.lock:
            if self.running:
                ready, _ = ray.wait(
                    [f.ref for f in self.running], num_returns=len(self.running), timeout=0
                )
                self.running = [f for f in self.running if f.ref not in ready]
            while self.queued and len(self.running) < self.capacity():
                final = self.queued.popleft()
                final.ref = self.task.remote(*final.args)
                self.running.append(final)
                self.started.append(len(self.running))
            if self.queued and self.thread is None:
                self.thread = threading.Thread(target=self._watch, daemon=True, name="final-slots")
                self.thread.start()

    def _watch(self) -> None:
        """Start the next queued evaluation as soon as a running one ends."""
        while not self.stop.is_set():
            self._wait_for_one(idle=1.0)
            self.pump()

    def wait(self, final: Final) -> dict[str, Any]:
        """``final``'s result; meanwhile the search starts nothing, so every slot is theirs."""
        with self.lock:
            self.waiting += 1
        try:
            while True:
                self.pump()
                if final.ref is not None:
                    return ray.get(final.ref)
                self._wait_for_one(idle=0.1)
        finally:
            with self.lock:
                self.waiting -= 1

    def _wait_for_one(self, idle: float) -> None:
        """Until a running evaluation ends (at most a second), or ``idle`` seconds if none
        runs."""
        with self.lock:
            refs = [f.ref for f in self.running]
        if refs:
            ray.wait(refs, num_returns=1, timeout=1.0)
        else:
            self.stop.wait(idle)

    def close(self) -> None:
        """Stop the watching thread (what still runs goes on; its results are not awaited)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
