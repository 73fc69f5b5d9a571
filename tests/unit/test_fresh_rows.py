"""FreshRows: exact scores of the rows written since the last build, against brute force."""

import numpy as np

from services.indexer.fresh_rows import INITIAL_SLOTS, FreshRows


def brute_force(queries, vectors_by_row, allowed=None):
    rows = sorted(r for r in vectors_by_row if allowed is None or r in allowed)
    matrix = np.stack([vectors_by_row[r] for r in rows]) if rows else np.zeros((0, 4))
    return {r: queries @ matrix[i] for i, r in enumerate(rows)}


def as_dict(scores, rows):
    return {int(r): scores[:, i] for i, r in enumerate(rows)}


def test_random_writes_discards_and_swaps_match_brute_force():
    rng = np.random.default_rng(0)
    fresh, truth, writes = FreshRows(4), {}, 0
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    for step in range(3000):
        row = int(rng.integers(0, 300))
        action = rng.random()
        if action < 0.6:
            writes += 1
            vector = rng.standard_normal(4).astype(np.float32)
            fresh.write(row, vector, writes)
            truth[row] = (writes, vector)
        elif action < 0.95:
            fresh.discard(row)
            truth.pop(row, None)
        else:  # a searcher built from the data as of write `cut` swaps in
            cut = writes - int(rng.integers(0, 20))
            fresh.keep_after(cut)
            truth = {r: (n, v) for r, (n, v) in truth.items() if n > cut}
        if step % 97 == 0:
            vectors = {r: v for r, (_, v) in truth.items()}
            got = as_dict(*fresh.scores(queries))
            want = brute_force(queries, vectors)
            assert got.keys() == want.keys() and len(fresh) == len(want)
            for r in want:
                np.testing.assert_allclose(got[r], want[r], rtol=1e-5, atol=1e-6)
            allowed = {r for r in range(0, 300, 3)}
            assert (
                as_dict(*fresh.scores(queries, allowed)).keys()
                == brute_force(queries, vectors, allowed).keys()
            )
    assert fresh.rows() == sorted(truth, key=lambda r: truth[r][0])  # write order


def test_rewrite_keeps_the_slot_and_discards_compact():
    fresh = FreshRows(2)
    fresh.write(7, np.array([1.0, 0.0], np.float32), 1)
    fresh.write(7, np.array([0.0, 1.0], np.float32), 2)
    scores, rows = fresh.scores(np.array([[0.0, 1.0]], np.float32))
    assert rows.tolist() == [7] and scores.tolist() == [[1.0]]
    for row in range(10 * INITIAL_SLOTS):
        fresh.write(row + 100, np.ones(2, np.float32), 3 + row)
    for row in range(10 * INITIAL_SLOTS):
        fresh.discard(row + 100)
    assert len(fresh) == 1 and 7 in fresh and 100 not in fresh
    assert fresh._used <= 2 * INITIAL_SLOTS  # dead slots were compacted away
    fresh.clear()
    assert len(fresh) == 0 and fresh.scores(np.ones((1, 2), np.float32))[1].size == 0
