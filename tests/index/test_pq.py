"""Product quantisation codecs (``pq4`` / ``pq2`` / ``pq1``): codes, the index built with them, the codebook file."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

from metaembed.budget import Budget
from metaembed.errors import IndexCorruptError, InputError
from metaembed.index import MultiVectorIndex
from metaembed.index.codecs import embedding_bytes, get_codec
from metaembed.index.codecs.pq import CENTROIDS

from .conftest import built_in_two_adds, search_matches_brute_force, survives_merge_save_and_reopen, unit_vectors


def _nearest_codes(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Reference encoder: per run of values, the index of the nearest centroid by squared distance (numpy)."""
    runs = vectors.reshape(vectors.shape[0], centroids.shape[0], centroids.shape[2])
    distances = ((runs[:, :, None, :] - centroids[None]) ** 2).sum(-1)  # (n, M, 256)
    return distances.argmin(-1)


@pytest.mark.parametrize("bits", [4, 2, 1])
def test_codes_are_the_nearest_centroids_and_decode_to_them(bits: int) -> None:
    vectors = unit_vectors(3, 600, 32)
    codec = get_codec(f"pq{bits}").fit(vectors)
    centroids = codec.state()["centroids"]
    assert centroids.shape == (32 * bits // 8, CENTROIDS, 8 // bits)
    codes, scales = codec.encode(vectors)
    assert scales is None and codes.dtype == np.uint8 and codes.shape == (600, 32 * bits // 8)
    reference = _nearest_codes(vectors.numpy().astype(np.float64), centroids.astype(np.float64))
    # ties between two centroids at float32 rounding are the only allowed difference
    assert (codes == reference).mean() > 0.999
    decoded = codec.decode(codes, None).numpy()
    expected = np.stack([centroids[m, codes[:, m]] for m in range(codes.shape[1])], axis=1).reshape(600, 32)
    np.testing.assert_array_equal(decoded, expected)
    # k-means on the data: far better than the data's own spread, and finer with more bits
    error = ((decoded - vectors.numpy()) ** 2).sum(-1).mean()
    assert error < {4: 0.08, 2: 0.35, 1: 0.6}[bits]


def test_more_bits_lose_less_and_training_is_deterministic() -> None:
    vectors = unit_vectors(4, 800, 32)
    errors = []
    for bits in (1, 2, 4):
        codec = get_codec(f"pq{bits}").fit(vectors)
        errors.append(float(((codec.decode(codec.encode(vectors)[0]) - vectors) ** 2).sum(-1).mean()))
        again = get_codec(f"pq{bits}").fit(vectors)
        np.testing.assert_array_equal(codec.state()["centroids"], again.state()["centroids"])
    assert errors[0] > errors[1] > errors[2]


def test_bytes_are_one_per_code() -> None:
    assert embedding_bytes(16, 384, "pq2") == 16 * 96 == embedding_bytes(16, 384, "float16") // 8
    assert embedding_bytes(16, 384, "pq4") == embedding_bytes(16, 384, "float16") // 4
    assert embedding_bytes(16, 384, "pq1") == embedding_bytes(16, 384, "float16") // 16


def test_bad_inputs_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="multiple of 4"):
        MultiVectorIndex.create(tmp_path / "odd", dim=30, num_vectors=4, dtype="pq2")
    with pytest.raises(InputError, match="at least 256 vectors, got 40"):
        get_codec("pq2").fit(unit_vectors(0, 40, 16))
    with pytest.raises(InputError, match="no codebooks yet"):
        get_codec("pq2").encode(unit_vectors(0, 4, 16))
    index = MultiVectorIndex.create(tmp_path / "small", dim=16, num_vectors=4, dtype="pq2")
    with pytest.raises(InputError, match="at least 256 vectors"):
        index.add([f"d{i}" for i in range(10)], unit_vectors(0, 10, 4, 16))
    assert len(index) == 0 and not list((tmp_path / "small").glob("codec-*")) and not list((tmp_path / "small").glob("seg-*"))
    with pytest.raises(InputError, match="NaN or inf"):
        index.add([f"d{i}" for i in range(80)], torch.full((80, 4, 16), float("nan")))
    index.close()


@pytest.fixture
def pq_index(tmp_path):
    """An index of 120 candidates x 8 vectors of D = 32 in pq2; the codebooks learnt from its first add."""
    ids = [f"doc-{i}" for i in range(120)]
    candidates, queries = unit_vectors(10, 120, 8, 32), unit_vectors(11, 6, 4, 32)
    index = built_in_two_adds(tmp_path / "pq.index", "pq2", ids, candidates, 80)  # 640 vectors: the training sample
    yield index, ids, candidates, queries
    index.close()


def _decoded(index: MultiVectorIndex, candidates: torch.Tensor) -> torch.Tensor:
    """What a pq index holds for ``candidates``, from the codebook file alone (numpy decoding)."""
    (state,) = index.path.glob("codec-*.npz")
    centroids = np.load(state)["centroids"]
    codes = _nearest_codes(candidates.reshape(-1, 32).numpy().astype(np.float64), centroids.astype(np.float64))
    values = np.stack([centroids[m, codes[:, m]] for m in range(codes.shape[1])], axis=1)
    return torch.from_numpy(values.reshape(candidates.shape))


def test_search_equals_brute_force_over_the_decoded_vectors(pq_index) -> None:
    index, ids, candidates, queries = pq_index
    decoded = _decoded(index, candidates)
    assert torch.allclose(index.vectors(ids), decoded, atol=1e-6)
    search_matches_brute_force(index, queries, decoded, ids)
    # the coarse-to-fine first stage works on the same codes: with a shortlist of everything it is exact
    coarse = index.search_batch(queries, 10, Budget(4, 8), mode="coarse", shortlist=len(ids))
    exact = index.search_batch(queries, 10, Budget(4, 8))
    assert [[h.id for h in row] for row in coarse] == [[h.id for h in row] for row in exact]


def test_exact_search_decodes_a_bounded_chunk_at_a_time(pq_index, monkeypatch) -> None:
    # A search once decoded each whole block of rows to fp32 first: 20x the codes' bytes in memory
    # (1.5 GiB for 50k candidates x 16 vectors of D = 384 at (8,16)); it now decodes per kernel task.
    import metaembed.scoring.kernel as scoring
    from metaembed.index.codecs.pq import ProductQuantizer

    index, ids, candidates, queries = pq_index
    expected = index.search_batch(queries, 10, Budget(4, 8))
    monkeypatch.setattr(scoring, "_DECODE_BYTES", 8 * 32 * 4 * 16)  # 16 candidates of fp32 at (4,8), D = 32
    decoded_rows: list[int] = []
    original = ProductQuantizer.decode

    def counting(self, codes, scales=None):
        decoded_rows.append(codes.shape[1])
        return original(self, codes, scales)

    monkeypatch.setattr(ProductQuantizer, "decode", counting)
    found = index.search_batch(queries, 10, Budget(4, 8))
    assert [[h.id for h in row] for row in found] == [[h.id for h in row] for row in expected]
    assert max(decoded_rows) <= 16 and sum(decoded_rows) == len(ids)  # every row once, 16 at most at a time


def test_the_codebook_survives_reopen_merge_and_save(pq_index, tmp_path) -> None:
    index, ids, candidates, queries = pq_index
    survives_merge_save_and_reopen(index, ids, candidates, queries, 70, tmp_path / "copy.index")


def test_a_damaged_or_missing_codebook_is_detected(pq_index) -> None:
    index, _, _, queries = pq_index
    folder = index.path
    index.close()
    (state,) = folder.glob("codec-*.npz")
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one centroid
    state.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="codebook file fails its checksum"):
        MultiVectorIndex.open(folder)
    damage = MultiVectorIndex.check(folder)
    assert [d.kind for d in damage] == ["config"] and "checksum" in damage[0].message
    with pytest.raises(IndexCorruptError, match="rebuild"):
        MultiVectorIndex.repair(folder)
    state.unlink()
    with pytest.raises(IndexCorruptError, match="codebook file is missing"):
        MultiVectorIndex.open(folder)


def test_a_killed_first_add_leaves_no_codebook(tmp_path, monkeypatch) -> None:
    from metaembed.index import store

    index = MultiVectorIndex.create(tmp_path / "i", dim=16, num_vectors=4, dtype="pq2")

    def fail(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(store, "write_segment", fail)
    with pytest.raises(OSError):
        index.add([f"d{i}" for i in range(80)], unit_vectors(5, 80, 4, 16))
    monkeypatch.undo()
    assert not list((tmp_path / "i").glob("codec-*")) and index.training_items == 16384 // 4
    index.add([f"d{i}" for i in range(80)], unit_vectors(5, 80, 4, 16))  # trains now
    assert index.training_items == 0 and len(list((tmp_path / "i").glob("codec-*"))) == 1
    index.close()
    catalog = sqlite3.connect(tmp_path / "i" / "catalog.sqlite")
    config = json.loads(catalog.execute("SELECT value FROM config WHERE key = 'codec_state'").fetchone()[0])
    catalog.close()
    assert (tmp_path / "i" / config["file"]).stat().st_size == config["bytes"]
