import threading

import numpy as np
import pytest

from services.embedder.batching import MicroBatcher


def test_concurrent_requests_share_runs_and_keep_order():
    batch_sizes = []
    batcher = MicroBatcher(
        lambda x: x * 2,
        max_batch=8,
        max_wait_s=0.05,
        on_batch=lambda rows, _q: batch_sizes.append(rows),
    )
    results = {}
    all_announced = threading.Barrier(8)

    def worker(i):
        with batcher.expecting() as ticket:  # as the embedder core does while decoding
            all_announced.wait()
            results[i] = batcher.run(np.full((2, 3), i, np.float32), timeout=5, ticket=ticket)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i in range(8):
        assert np.array_equal(results[i], np.full((2, 3), 2 * i, np.float32))
    assert sum(batch_sizes) == 16
    assert max(batch_sizes) <= 8
    assert len(batch_sizes) < 8  # some requests were batched together


def test_a_large_request_is_split_and_errors_propagate():
    batcher = MicroBatcher(lambda x: x + 1, max_batch=4, max_wait_s=0.0)
    out = batcher.run(np.zeros((10, 2), np.float32), timeout=5)
    assert out.shape == (10, 2) and np.all(out == 1)

    def fail(_x):
        raise ValueError("boom")

    failing = MicroBatcher(fail, max_batch=4, max_wait_s=0.0)
    try:
        failing.run(np.zeros((1, 2), np.float32), timeout=5)
        raise AssertionError("expected ValueError")
    except ValueError as exc:
        assert "boom" in str(exc)
    batcher.close()
    failing.close()


def test_an_idle_batcher_runs_a_lone_request_without_its_wait():
    batch_sizes = []
    batcher = MicroBatcher(
        lambda x: x * 2, max_batch=8, max_wait_s=60.0, on_batch=lambda r, _q: batch_sizes.append(r)
    )
    try:
        # Nobody else is announced: the 60 s wait must not apply (the result comes in 5 s).
        out = batcher.run(np.ones((1, 3), np.float32), timeout=5)
        assert np.array_equal(out, np.full((1, 3), 2.0, np.float32))
        assert batch_sizes == [1]
    finally:
        batcher.close()


def test_a_run_waits_for_an_announced_request_and_a_withdrawn_one_ends_the_wait():
    batch_sizes = []
    batcher = MicroBatcher(
        lambda x: x, max_batch=8, max_wait_s=60.0, on_batch=lambda r, _q: batch_sizes.append(r)
    )
    try:
        with batcher.expecting() as ticket:
            first = batcher.submit(np.zeros((1, 3), np.float32))
            second = batcher.submit(np.zeros((2, 3), np.float32), ticket=ticket)
        first.result(5)
        second.result(5)
        assert batch_sizes == [3]  # the first waited for the announced second
        with batcher.expecting():
            third = batcher.submit(np.zeros((1, 3), np.float32))
        # the announced request gave up without submitting: the run goes ahead alone
        third.result(5)
        assert batch_sizes == [3, 1]
    finally:
        batcher.close()


def test_a_closed_batcher_refuses_new_work():
    from services.common.errors import UnavailableError

    batcher = MicroBatcher(lambda x: x, max_batch=4, max_wait_s=0.0)
    batcher.close()
    with pytest.raises(UnavailableError):
        batcher.run(np.zeros((1, 2), np.float32), timeout=5)


def test_an_inline_submit_runs_on_the_caller_when_idle_and_queues_when_busy():
    threads = []
    release = threading.Event()

    def run(batch):
        threads.append(threading.current_thread().name)
        if batch[0, 0] == 1.0:
            release.wait(5)  # the first run holds the model
        return batch

    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.0)
    try:
        done = batcher.submit(np.zeros((1, 2), np.float32), inline=True)
        assert done.done() and threads == ["MainThread"]
        holder = threading.Thread(
            target=lambda: batcher.submit(np.ones((1, 2), np.float32), inline=True),
            name="holder",
        )
        holder.start()
        while len(threads) < 2:
            threading.Event().wait(0.01)
        queued = batcher.submit(np.full((1, 2), 2.0, np.float32), inline=True)
        assert not queued.done()  # the model is busy: queued for the batcher's thread
        release.set()
        assert np.array_equal(queued.result(5), np.full((1, 2), 2.0, np.float32))
        holder.join(5)
        assert threads == ["MainThread", "holder", "micro-batcher"]
    finally:
        release.set()
        batcher.close()
