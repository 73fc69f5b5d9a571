"""Binary codes: packing, Hamming top-k against a direct count, re-scoring."""

import numpy as np
import pytest

from services.indexer.binary_codes import BinaryIndex, encode, fit_thresholds, hamming_topk


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_codes_pack_one_bit_per_dimension_in_whole_words():
    vectors = np.array([[0.5, -0.1, 0.2], [-1.0, 2.0, -3.0]], np.float32)
    codes = encode(vectors, fit_thresholds(vectors, "sign"))
    assert codes.shape == (2, 8) and codes.dtype == np.uint8
    assert codes[0, 0] == 0b10100000 and codes[1, 0] == 0b01000000
    assert not codes[:, 1:].any()
    mean = fit_thresholds(np.abs(vectors), "mean")
    assert np.allclose(mean, [0.75, 1.05, 1.6])
    with pytest.raises(ValueError):
        fit_thresholds(vectors, "median")


def test_hamming_topk_matches_a_direct_count_across_blocks(monkeypatch):
    import services.indexer.binary_codes as binary_codes

    monkeypatch.setattr(binary_codes, "BLOCK_ROWS", 64)  # several blocks
    rng = np.random.default_rng(0)
    base, queries = unit(rng, 300, 100), unit(rng, 5, 100)
    codes, qcodes = encode(base, np.zeros(100)), encode(queries, np.zeros(100))
    rows, dist = hamming_topk(qcodes, codes, 7)
    bits = np.unpackbits(codes, axis=1).astype(int)
    qbits = np.unpackbits(qcodes, axis=1).astype(int)
    direct = (qbits[:, None, :] != bits[None, :, :]).sum(axis=2)
    for i in range(5):
        expected = np.lexsort((np.arange(300), direct[i]))[:7]
        assert rows[i].tolist() == expected.tolist()
        assert dist[i].tolist() == direct[i, expected].tolist()


def test_rescoring_recovers_exact_neighbours_from_enough_candidates():
    rng = np.random.default_rng(1)
    base = unit(rng, 2000, 64)
    queries = base[:20] + 0.05 * unit(rng, 20, 64)
    index = BinaryIndex.build(base, "sign", None)
    assert index.bytes_per_vector == 8
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    rows, scores = index.search(queries, 10, candidates=400)
    recall = np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows, exact, strict=True)])
    assert recall > 0.9
    assert np.allclose(scores[:, 0], np.einsum("ij,ij->i", queries, base[rows[:, 0]]), atol=1e-5)
    first_stage, _ = index.search(queries, 10, candidates=0)
    assert first_stage[:, 0].tolist() == list(range(20))
