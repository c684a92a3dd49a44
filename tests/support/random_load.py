"""Random request traffic for leak tests: submits, aborts at random moments, reads every stream."""

from __future__ import annotations

import random
import time

from runtime_service.engine.request import Request, SamplingParams


def submit_and_abort_at_random(executor, num_requests: int, vocab_size: int, seed: int,
                               max_new_tokens: int = 6, unread_streams: int = 200,
                               random_end_ids: bool = False) -> None:
    """Requests of 1-24 prompt tokens and 1..max_new_tokens new ones, greedy or sampled (and
    with a random end id if asked); after each submit, a third of the time, an earlier request
    is aborted. At most `unread_streams` streams wait unread; every stream is read to its end."""
    rng = random.Random(seed)
    streams = []
    for i in range(num_requests):
        prompt = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 24))]
        extra = {"end_id": rng.randrange(vocab_size)} if random_end_ids else {}
        params = SamplingParams(max_new_tokens=rng.randint(1, max_new_tokens),
                                temperature=rng.choice([0.0, 0.8]), seed=i, **extra)
        streams.append(executor.submit(Request(f"r{i}", prompt, params)))
        if rng.random() < 0.33:
            executor.abort(f"r{rng.randrange(i + 1)}")
        if len(streams) > unread_streams:
            list(streams.pop(0))
    for stream in streams:
        list(stream)


def wait_idle(executor, timeout_s: float = 20.0):
    """The executor's stats once nothing is live, queued or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = executor.stats()
        if stats.num_live_requests == 0 and stats.num_running == 0 and stats.num_waiting == 0:
            return stats
        time.sleep(0.01)
    raise AssertionError(f"executor did not go idle: {executor.stats()}")
