import threading

import numpy as np

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

    def worker(i):
        results[i] = batcher.run(np.full((2, 3), i, np.float32), timeout=5)

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
