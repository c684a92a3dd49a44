"""In-flight batching: budgets, KV capacity, both policies, chunked prefill, preemption, order.

Deterministic scenarios first, then a hypothesis-driven simulation that runs the scheduler against
a fake executor and checks the invariants on every step.
"""

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from runtime_service.errors import InvalidRequest
from runtime_service.engine.kv_cache import KVCacheManager, blocks_for_tokens
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.engine.scheduler import (ScheduledSequence, Scheduler, SchedulerConfig,
                                       SchedulerPolicy)
from runtime_service.engine.sequence import Sequence, SequenceStatus

NO_EVICT = SchedulerPolicy.GUARANTEED_NO_EVICT
MAX_UTIL = SchedulerPolicy.MAX_UTILIZATION
MAX_SEQ_LEN = 64


def make_seq(request_id, prompt_len, max_new_tokens=8, priority=0, arrival_time=0.0):
    request = Request(request_id, list(range(1, prompt_len + 1)),
                      SamplingParams(max_new_tokens=max_new_tokens),
                      priority=priority, arrival_time=arrival_time)
    return Sequence(request, MAX_SEQ_LEN)


def make_scheduler(num_blocks=64, block_size=4, **config):
    return Scheduler(SchedulerConfig(**config), KVCacheManager(num_blocks, block_size))


def add_all(scheduler, *seqs):
    for seq in seqs:
        scheduler.add(seq)


def output_token(seq):
    return 1000 + seq.num_output_tokens


def execute(scheduler, out):
    """What the executor does after the model runs: advance, append the sampled token, finish."""
    for item in out.scheduled:
        completes = item.completes
        item.seq.num_computed_tokens += item.num_new_tokens
        if completes:
            item.seq.token_ids.append(output_token(item.seq))
            if item.seq.num_tokens >= item.seq.max_total_tokens:
                scheduler.finish(item.seq)


def step(scheduler):
    out = scheduler.schedule()
    execute(scheduler, out)
    return out


def new_tokens(out):
    return {item.seq.request_id: item.num_new_tokens for item in out.scheduled}


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["max_batch_size", "max_num_tokens"])
def test_config_rejects_nonpositive_limits(field):
    with pytest.raises(InvalidRequest, match=field):
        SchedulerConfig(**{field: 0})


def test_config_accepts_policy_by_name():
    assert SchedulerConfig(policy="MAX_UTILIZATION").policy is MAX_UTIL
    with pytest.raises(ValueError):
        SchedulerConfig(policy="FASTEST")


# ---- ScheduledSequence.completes ---------------------------------------------------------------

def test_scheduled_sequence_completes_only_when_it_reaches_the_last_token():
    seq = make_seq("a", prompt_len=10)
    assert not ScheduledSequence(seq, 4).completes
    assert ScheduledSequence(seq, 10).completes
    seq.num_computed_tokens = 8
    assert ScheduledSequence(seq, 2).completes
    assert not ScheduledSequence(seq, 1).completes


# ---- budgets -----------------------------------------------------------------------------------

def test_batch_size_bounds_admission():
    scheduler = make_scheduler(max_batch_size=3)
    seqs = [make_seq(f"r{i}", 2, arrival_time=i) for i in range(5)]
    add_all(scheduler, *seqs)
    out = scheduler.schedule()
    assert [s.seq for s in out.scheduled] == seqs[:3]
    assert scheduler.running == seqs[:3]
    assert scheduler.waiting == seqs[3:]
    execute(scheduler, out)
    assert len(scheduler.schedule().scheduled) == 3      # still full: the decodes keep their slots


def test_token_budget_bounds_admission_without_chunking():
    scheduler = make_scheduler(max_num_tokens=10, enable_chunked_prefill=False)
    add_all(scheduler, *(make_seq(f"r{i}", 4, arrival_time=i) for i in range(3)))
    out = scheduler.schedule()
    assert new_tokens(out) == {"r0": 4, "r1": 4}
    assert out.num_tokens == 8
    assert [s.request_id for s in scheduler.waiting] == ["r2"]


def test_running_decodes_go_before_waiting_requests_of_any_priority():
    scheduler = make_scheduler(max_num_tokens=3, enable_chunked_prefill=False)
    add_all(scheduler, *(make_seq(f"r{i}", 1, arrival_time=i) for i in range(3)))
    step(scheduler)                                      # all three prefill (1 token each)
    scheduler.add(make_seq("urgent", 1, priority=10, arrival_time=9))
    out = scheduler.schedule()
    assert new_tokens(out) == {"r0": 1, "r1": 1, "r2": 1}
    assert [s.request_id for s in scheduler.waiting] == ["urgent"]


# ---- chunked prefill ---------------------------------------------------------------------------

def test_chunked_prefill_splits_a_long_prompt_across_steps():
    scheduler = make_scheduler(max_num_tokens=4)
    seq = make_seq("long", 10, max_new_tokens=3)
    scheduler.add(seq)
    chunks, sampled = [], []
    while scheduler.has_work:
        out = scheduler.schedule()
        assert out.num_tokens <= 4
        chunks.append(out.scheduled[0].num_new_tokens)
        sampled.append(out.scheduled[0].completes)
        execute(scheduler, out)
    assert chunks == [4, 4, 2, 1, 1]
    assert sampled == [False, False, True, True, True]
    assert seq.output_token_ids == [1000, 1001, 1002]


def test_chunked_prefill_fills_the_budget_left_by_decodes():
    scheduler = make_scheduler(max_num_tokens=6)
    add_all(scheduler, make_seq("a", 2, arrival_time=0), make_seq("b", 2, arrival_time=1))
    step(scheduler)
    scheduler.add(make_seq("long", 20, arrival_time=2))
    out = scheduler.schedule()
    assert new_tokens(out) == {"a": 1, "b": 1, "long": 4}
    execute(scheduler, out)
    assert new_tokens(scheduler.schedule()) == {"a": 1, "b": 1, "long": 4}


def test_without_chunked_prefill_a_prompt_over_the_budget_waits_for_a_fresh_step():
    scheduler = make_scheduler(max_num_tokens=8, enable_chunked_prefill=False)
    add_all(scheduler, make_seq("a", 3, arrival_time=0), make_seq("b", 6, arrival_time=1))
    out = scheduler.schedule()
    assert new_tokens(out) == {"a": 3}                    # b's 6 tokens do not fit in 5
    execute(scheduler, out)
    assert new_tokens(scheduler.schedule()) == {"a": 1, "b": 6}


# ---- admission order ---------------------------------------------------------------------------

def test_admission_is_by_priority_then_arrival():
    scheduler = make_scheduler(max_batch_size=1)
    order = [("low-early", 0, 0.0), ("high-late", 5, 3.0), ("mid", 2, 1.0),
             ("high-early", 5, 2.0), ("low-late", 0, 4.0)]
    add_all(scheduler, *(make_seq(name, 2, max_new_tokens=1, priority=p, arrival_time=t)
                         for name, p, t in order))
    admitted = []
    while scheduler.has_work:
        out = step(scheduler)
        admitted += [s.seq.request_id for s in out.scheduled]
    assert admitted == ["high-early", "high-late", "mid", "low-early", "low-late"]


def test_a_request_that_does_not_fit_holds_back_later_ones():
    scheduler = make_scheduler(num_blocks=4, block_size=4, policy=MAX_UTIL)
    add_all(scheduler, make_seq("a", 8, arrival_time=0), make_seq("big", 12, arrival_time=1),
            make_seq("small", 1, arrival_time=2))
    out = scheduler.schedule()
    assert new_tokens(out) == {"a": 8}
    assert [s.request_id for s in scheduler.waiting] == ["big", "small"]


# ---- KV capacity and policies ------------------------------------------------------------------

def test_max_utilization_admits_whatever_fits_now():
    scheduler = make_scheduler(num_blocks=4, block_size=4, policy=MAX_UTIL)
    add_all(scheduler, *(make_seq(f"r{i}", 8, max_new_tokens=20, arrival_time=i) for i in range(3)))
    out = scheduler.schedule()
    assert new_tokens(out) == {"r0": 8, "r1": 8}
    assert scheduler.kv.num_free_blocks == 0


def test_guaranteed_no_evict_reserves_room_for_the_maximum_length():
    # a: 4 prompt + 8 new = 12 tokens = 3 blocks; b: 4 + 4 = 2 blocks; the pool has 4 blocks.
    no_evict = make_scheduler(num_blocks=4, block_size=4, policy=NO_EVICT)
    a, b = make_seq("a", 4, max_new_tokens=8, arrival_time=0), make_seq("b", 4, 4, arrival_time=1)
    add_all(no_evict, a, b)
    assert new_tokens(no_evict.schedule()) == {"a": 4}
    assert no_evict.waiting == [b]
    greedy = make_scheduler(num_blocks=4, block_size=4, policy=MAX_UTIL)
    add_all(greedy, make_seq("a", 4, 8, arrival_time=0), make_seq("b", 4, 4, arrival_time=1))
    assert new_tokens(greedy.schedule()) == {"a": 4, "b": 4}


def test_guaranteed_no_evict_counts_the_reservations_of_this_steps_admissions():
    # Each request may grow to 3 blocks of the 8: two fit with room to finish, a third does
    # not, though its first block would. The step admits two and holds the third back, so
    # the second's reservation counts when the third is considered.
    scheduler = make_scheduler(num_blocks=8, block_size=4, policy=NO_EVICT)
    seqs = [make_seq(name, 4, max_new_tokens=8, arrival_time=i) for i, name in enumerate("abc")]
    add_all(scheduler, *seqs)
    assert new_tokens(scheduler.schedule()) == {"a": 4, "b": 4}
    assert scheduler.waiting == [seqs[2]]


def test_guaranteed_no_evict_admits_once_a_finish_frees_the_reservation():
    scheduler = make_scheduler(num_blocks=4, block_size=4, policy=NO_EVICT)
    a, b = make_seq("a", 4, max_new_tokens=8, arrival_time=0), make_seq("b", 4, 4, arrival_time=1)
    add_all(scheduler, a, b)
    while a.status is not SequenceStatus.FINISHED:
        out = step(scheduler)
        assert b not in [s.seq for s in out.scheduled]
        assert not out.preempted
    assert a.num_output_tokens == 8
    assert new_tokens(scheduler.schedule()) == {"b": 4}


def test_guaranteed_no_evict_never_preempts_under_pressure():
    scheduler = make_scheduler(num_blocks=6, block_size=2, max_num_tokens=5, policy=NO_EVICT)
    seqs = [make_seq(f"r{i}", 3 + i % 3, max_new_tokens=4 + i % 4, arrival_time=i)
            for i in range(8)]
    add_all(scheduler, *seqs)
    while scheduler.has_work:
        out = step(scheduler)
        assert out and not out.preempted
    assert all(s.num_tokens == s.max_total_tokens and s.num_preemptions == 0 for s in seqs)
    assert scheduler.kv.num_free_blocks == 6


def _two_full_sequences():
    """a and b each hold 2 of the 4 blocks (block size 2) with 5 tokens: the next decode needs
    a third block that the pool does not have."""
    scheduler = make_scheduler(num_blocks=4, block_size=2, max_batch_size=2, policy=MAX_UTIL)
    a = make_seq("a", 4, max_new_tokens=4, arrival_time=0)
    b = make_seq("b", 4, max_new_tokens=4, arrival_time=1)
    c = make_seq("c", 1, max_new_tokens=1, arrival_time=2)
    add_all(scheduler, a, b, c)
    out = step(scheduler)
    assert new_tokens(out) == {"a": 4, "b": 4}
    assert scheduler.kv.num_free_blocks == 0
    return scheduler, a, b, c


def test_max_utilization_preempts_the_newest_running_request():
    scheduler, a, b, c = _two_full_sequences()
    b_tokens = list(b.token_ids)
    out = scheduler.schedule()
    assert out.preempted == [b]
    assert new_tokens(out) == {"a": 1}
    assert b.block_ids == [] and b.num_computed_tokens == 0
    assert b.status is SequenceStatus.WAITING and b.num_preemptions == 1
    assert b.token_ids == b_tokens                        # the generated token is kept
    assert scheduler.running == [a]
    assert scheduler.waiting[0] is b
    assert len(a.block_ids) == 3


def test_preempted_request_resumes_first_and_recomputes_all_its_tokens():
    scheduler, a, b, c = _two_full_sequences()
    out = step(scheduler)
    assert out.preempted == [b]
    assert scheduler.waiting == [b, c]                   # ahead of c, which arrived later
    while a.status is not SequenceStatus.FINISHED:
        step(scheduler)
    out = scheduler.schedule()
    assert out.scheduled[0].seq is b
    assert out.scheduled[0].num_new_tokens == b.num_tokens == 5
    assert out.scheduled[0].completes
    execute(scheduler, out)
    while scheduler.has_work:
        step(scheduler)
    assert b.output_token_ids == [1000, 1001, 1002, 1003]
    assert a.output_token_ids == [1000, 1001, 1002, 1003]
    assert scheduler.kv.num_free_blocks == 4


def test_newest_request_that_cannot_grow_preempts_itself():
    scheduler = make_scheduler(num_blocks=4, block_size=2, policy=MAX_UTIL)
    a = make_seq("a", 3, max_new_tokens=4, arrival_time=0)     # 4 tokens after a step: 2 blocks
    b = make_seq("b", 4, max_new_tokens=4, arrival_time=1)     # 5 tokens: needs a third block
    add_all(scheduler, a, b)
    step(scheduler)
    out = scheduler.schedule()
    assert out.preempted == [b]
    assert new_tokens(out) == {"a": 1}
    assert scheduler.running == [a] and scheduler.waiting == [b]
    assert b.block_ids == [] and b.num_computed_tokens == 0


def test_preempted_request_is_not_readmitted_in_the_step_that_preempted_it():
    # r1 cannot grow and preempts itself, freeing one block; re-admitting it at once would undo
    # the preemption (and report it both preempted and scheduled).
    scheduler = make_scheduler(num_blocks=3, block_size=1, max_num_tokens=2, policy=MAX_UTIL)
    r0, r1 = make_seq("r0", 1, max_new_tokens=2, arrival_time=0), make_seq("r1", 1, 2, arrival_time=1)
    add_all(scheduler, r0, r1)
    step(scheduler)
    out = scheduler.schedule()
    assert out.preempted == [r1]
    assert new_tokens(out) == {"r0": 1}
    assert scheduler.waiting == [r1] and r1.block_ids == []


def test_preempted_request_longer_than_the_budget_resumes_without_chunked_prefill():
    # r1 is preempted holding 3 tokens while the step budget is 2: it must still come back.
    scheduler = make_scheduler(num_blocks=4, block_size=1, max_num_tokens=2, policy=MAX_UTIL,
                               enable_chunked_prefill=False)
    r0, r1 = make_seq("r0", 1, max_new_tokens=3, arrival_time=0), make_seq("r1", 1, 3, arrival_time=1)
    add_all(scheduler, r0, r1)
    preempted = []
    for _ in range(20):
        if not scheduler.has_work:
            break
        out = step(scheduler)
        assert out, "work is pending but nothing was scheduled"
        preempted += out.preempted
    assert preempted == [r1]
    assert r0.output_token_ids == r1.output_token_ids == [1000, 1001, 1002]
    assert scheduler.kv.num_free_blocks == 4


# ---- finish ------------------------------------------------------------------------------------

def test_finish_frees_blocks_of_running_and_removes_waiting_requests():
    scheduler = make_scheduler(num_blocks=8, block_size=4, max_batch_size=1)
    a, b = make_seq("a", 6, arrival_time=0), make_seq("b", 3, arrival_time=1)
    add_all(scheduler, a, b)
    step(scheduler)
    assert scheduler.kv.num_free_blocks == 6
    scheduler.finish(a)
    assert a.status is SequenceStatus.FINISHED and a.block_ids == []
    assert scheduler.kv.num_free_blocks == 8 and scheduler.kv.num_live_sequences == 0
    assert scheduler.running == []
    scheduler.finish(b)
    assert scheduler.waiting == [] and not scheduler.has_work
    assert not scheduler.schedule()


# ---- simulation --------------------------------------------------------------------------------

@st.composite
def workloads(draw):
    policy = draw(st.sampled_from([NO_EVICT, MAX_UTIL]))
    chunked = draw(st.booleans())
    block_size = draw(st.integers(1, 4))
    max_num_tokens = draw(st.integers(1, 16))
    max_batch_size = draw(st.integers(1, 4))
    max_prompt = 12 if chunked else min(12, max_num_tokens)
    requests = draw(st.lists(st.tuples(
        st.integers(1, max_prompt),              # prompt length
        st.integers(1, 8),                       # max_new_tokens
        st.integers(0, 2),                       # priority
        st.integers(0, 6),                       # arrival step
    ), min_size=1, max_size=10))
    largest = max(blocks_for_tokens(min(MAX_SEQ_LEN, p + n), block_size) for p, n, _, _ in requests)
    num_blocks = largest + draw(st.integers(0, 4))
    aborts = draw(st.lists(st.tuples(st.integers(0, 30), st.integers(0, len(requests) - 1)),
                           max_size=3))
    return dict(policy=policy, chunked=chunked, block_size=block_size, num_blocks=num_blocks,
                max_num_tokens=max_num_tokens, max_batch_size=max_batch_size,
                requests=requests, aborts=aborts)


def check_invariants(scheduler, out, seqs, config):
    kv = scheduler.kv
    scheduled = [item.seq for item in out.scheduled]
    assert out.num_tokens <= config.max_num_tokens
    assert len(out.scheduled) <= config.max_batch_size
    assert len(scheduler.running) <= config.max_batch_size
    assert len(scheduled) == len({id(s) for s in scheduled})
    for item in out.scheduled:
        assert item.seq in scheduler.running and item.seq.status is SequenceStatus.RUNNING
        assert 1 <= item.num_new_tokens <= item.seq.num_uncomputed_tokens
        assert len(item.seq.block_ids) * kv.block_size >= \
            item.seq.num_computed_tokens + item.num_new_tokens
    if config.policy is NO_EVICT:
        assert not out.preempted
    for seq in out.preempted:
        assert seq.num_computed_tokens == 0 and not seq.block_ids
        assert seq.status is SequenceStatus.WAITING and seq in scheduler.waiting
    for seq in scheduler.waiting:
        assert not seq.block_ids and seq.status is SequenceStatus.WAITING
    for seq in scheduler.running:
        assert len(seq.block_ids) * kv.block_size >= seq.num_computed_tokens
    owned = [b for s in seqs for b in s.block_ids]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert set(owned) <= set(range(kv.num_total_blocks))
    assert kv.num_free_blocks + len(owned) == kv.num_total_blocks
    assert kv.num_live_sequences == sum(1 for s in seqs if s.block_ids)
    assert out or not scheduler.has_work, "work is pending but nothing was scheduled"


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_simulated_serving_keeps_every_invariant(w):
    config = SchedulerConfig(max_batch_size=w["max_batch_size"], max_num_tokens=w["max_num_tokens"],
                             policy=w["policy"], enable_chunked_prefill=w["chunked"])
    scheduler = Scheduler(config, KVCacheManager(w["num_blocks"], w["block_size"]))
    seqs = [make_seq(f"r{i}", p, max_new_tokens=n, priority=prio, arrival_time=arrive + i / 100)
            for i, (p, n, prio, arrive) in enumerate(w["requests"])]
    arrivals = {i: arrive for i, (_, _, _, arrive) in enumerate(w["requests"])}
    aborted = set()
    for step_index in range(2000):
        for i, seq in enumerate(seqs):
            if arrivals[i] == step_index:
                scheduler.add(seq)
        for abort_step, i in w["aborts"]:
            if abort_step == step_index and arrivals[i] <= step_index and not seqs[i].is_finished:
                scheduler.finish(seqs[i])
                aborted.add(i)
                event("a request was aborted")
        if step_index > max(arrivals.values()) and not scheduler.has_work:
            break
        out = scheduler.schedule()
        check_invariants(scheduler, out, seqs, config)
        if out.preempted:
            event("a request was preempted")
        if any(not item.completes for item in out.scheduled):
            event("a prompt was split into chunks")
        execute(scheduler, out)
    else:
        pytest.fail("the simulation did not finish: the scheduler stalled or livelocked")
    assert scheduler.kv.num_free_blocks == w["num_blocks"]
    assert scheduler.kv.num_live_sequences == 0
    assert not scheduler.running and not scheduler.waiting
    for i, seq in enumerate(seqs):
        assert seq.is_finished
        if i not in aborted:
            expected = seq.max_total_tokens - seq.num_prompt_tokens
            assert seq.output_token_ids == [1000 + k for k in range(expected)]


def test_pending_token_counts_as_uncomputed_and_one_that_fills_max_length_stops_scheduling():
    """Overlapped steps: a token sampled on the device but not yet read is one the cache must
    still compute; when it is the sequence's last allowed token, nothing more is scheduled, so
    no block is taken beyond the sequence's reservation."""
    scheduler = make_scheduler(num_blocks=8, block_size=4)
    going, ending = make_seq("going", 4, max_new_tokens=8), make_seq("ending", 4, max_new_tokens=2)
    add_all(scheduler, going, ending)
    for item in scheduler.schedule().scheduled:           # both prompts, each samples a token
        item.seq.num_computed_tokens += item.num_new_tokens
        item.seq.num_pending_tokens += 1
    ending.token_ids.append(7)                              # "ending" read its first token back
    ending.num_pending_tokens -= 1
    out = scheduler.schedule()                              # "going": the pending token only
    assert [(s.seq.request_id, s.num_new_tokens, s.completes) for s in out.scheduled] == [
        ("going", 1, True), ("ending", 1, True)]
    for item in out.scheduled:
        item.seq.num_computed_tokens += 1
        item.seq.num_pending_tokens += 1
    assert ending.reached_max_length                        # 4 + 1 known + 1 pending = 6
    blocks_before = len(ending.block_ids)
    out = scheduler.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["going"]
    assert len(ending.block_ids) == blocks_before
