"""Full evaluations wait on the driver and start only in the slots the search leaves: while it
may start trials, the cluster's slots less its own; once the driver waits for them, every
slot. Real Ray tasks on a local Ray of 2 CPUs (a slot = 1 CPU)."""

from __future__ import annotations

import time

import ray

from selmatch_tune.flow.slots import FinalSlots
from selmatch_tune.settings.presets import smoke


@ray.remote(num_cpus=1)
def _evaluation(seconds: float, index: int) -> dict[str, float]:
    started = time.time()
    time.sleep(seconds)
    return {"index": index, "start": started, "end": time.time()}


def _overlap(results: list[dict[str, float]]) -> int:
    """The most evaluations that ran at the same moment."""
    moments = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def test_finals_take_only_the_slots_the_search_leaves(local_ray) -> None:
    config = smoke().replace(max_concurrent=1, gpus_per_trial=0)  # it keeps 1 of 2 slots
    slots = FinalSlots(config, _evaluation)
    assert slots.reserved == 1 and slots.slots() == 2
    try:
        finals = [slots.submit(1.0, i) for i in range(3)]
        assert sum(f.ref is not None for f in finals) == 1  # the others wait on the driver
        time.sleep(3.5)  # the search "runs": they start one after another in the free slot
        assert all(f.ref is not None for f in finals)
        results = [f.result() for f in finals]
        assert _overlap(results) == 1
        assert [r["index"] for r in results] == [0, 1, 2]
        # once the driver waits for them, every slot is theirs
        finals = [slots.submit(1.5, i) for i in range(4)]
        results = [f.result() for f in finals]
        assert _overlap(results) == 2
    finally:
        slots.close()


def test_with_no_slot_to_spare_finals_wait_for_the_driver(local_ray) -> None:
    slots = FinalSlots(smoke().replace(max_concurrent=2, gpus_per_trial=0), _evaluation)
    try:
        final = slots.submit(0.1, 0)
        time.sleep(1.0)
        assert final.ref is None  # the search holds both slots: nothing started beside it
        assert final.result()["index"] == 0
    finally:
        slots.close()
