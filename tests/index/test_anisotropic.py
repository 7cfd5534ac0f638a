"""Score-aware product quantisation ``apq2``: its codes against a brute-force numpy optimum, the index built with it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from metaembed.budget import Budget
from metaembed.errors import IndexCorruptError, InputError
from metaembed.index import MultiVectorIndex
from metaembed.index.codecs import embedding_bytes, get_codec
from metaembed.index.codecs.anisotropic import ETA

from .conftest import brute_force, built_in_two_adds, unit_vectors


def _loss(vectors: np.ndarray, decoded: np.ndarray, eta: float) -> np.ndarray:
    """The anisotropic loss ``|r|^2 + (eta - 1) (r . x)^2`` of unit ``vectors`` (n, D) against ``decoded`` (n, D)."""
    residual = vectors - decoded
    return (residual**2).sum(-1) + (eta - 1) * (residual * vectors).sum(-1) ** 2


def clustered(seed: int, *shape: int, topics: int = 12, spread: float = 0.6) -> torch.Tensor:
    """Unit vectors around a few shared directions, like text embeddings (not isotropic noise)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(topics, shape[-1], generator=torch.Generator().manual_seed(99))
    pick = torch.randint(0, topics, shape[:-1], generator=generator)
    values = centres[pick] + spread * torch.randn(*shape, generator=generator) * centres.norm(dim=-1).mean() / shape[-1] ** 0.5
    return values / values.norm(dim=-1, keepdim=True)


def test_codes_come_close_to_the_brute_force_optimum_of_the_anisotropic_loss() -> None:
    # D = 8: two runs, so every one of the 256 x 256 code pairs can be tried in numpy (float64)
    vectors = clustered(0, 1500, 8)
    codec = get_codec("apq2").fit(vectors)
    centroids = codec.state()["centroids"].astype(np.float64)
    assert centroids.shape == (2, 256, 4) and codec.state()["eta"].tolist() == [ETA]
    codes, scales = codec.encode(vectors[:60])
    assert scales is None and codes.dtype == np.uint8 and codes.shape == (60, 2)
    x = vectors[:60].numpy().astype(np.float64)
    pairs = np.array(list(itertools.product(range(256), repeat=2)))  # (65536, 2)
    every = np.concatenate([centroids[0][pairs[:, 0]], centroids[1][pairs[:, 1]]], axis=1)  # (65536, 8)
    best, nearest_loss, found, settled = [], [], [], []
    for row, code in zip(x, codes.astype(np.int64)):
        losses = _loss(row[None], every, ETA)
        best.append(losses.min())
        found.append(losses[code[0] * 256 + code[1]])
        nearest_loss.append(losses[((every - row) ** 2).sum(-1).argmin()])  # pq2's choice: the nearest pair
        table = losses.reshape(256, 256)  # no single code can be changed for the better
        settled.append(found[-1] <= min(table[code[0]].min(), table[:, code[1]].min()) + 1e-9)
    best, found, nearest_loss = map(np.array, (best, found, nearest_loss))
    assert (found <= nearest_loss + 1e-9).all()  # descent from pq2's codes never makes the loss worse
    assert found.mean() < 0.97 * nearest_loss.mean()  # ... and it gains on the way
    assert found.mean() < 1.05 * best.mean()  # close to the global optimum
    assert np.mean(settled) >= 0.95
    # decoding: the chosen centroids side by side, at unit length (numpy reference)
    raw = np.concatenate([centroids[0][codes[:, 0]], centroids[1][codes[:, 1]]], axis=1)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(codec.decode(codes, None).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_error_along_each_vector_shrinks_and_the_error_stays_bounded() -> None:
    vectors = clustered(1, 2000, 32)
    apq2, pq2 = get_codec("apq2").fit(vectors), get_codec("pq2").fit(vectors)
    np.testing.assert_array_equal(apq2.state()["centroids"], pq2.state()["centroids"])  # the same k-means
    x = vectors.numpy()
    decoded_a = apq2.decode(apq2.encode(vectors)[0]).numpy()
    decoded_p = pq2.decode(pq2.encode(vectors)[0]).numpy()
    along_a, along_p = np.abs(((x - decoded_a) * x).sum(-1)), np.abs(((x - decoded_p) * x).sum(-1))
    assert along_a.mean() < 0.6 * along_p.mean()
    assert ((x - decoded_a) ** 2).sum(-1).mean() < 0.35  # a quantisation, not noise: unit vectors are 2 apart at worst
    assert np.allclose(np.linalg.norm(decoded_a, axis=1), 1, atol=1e-5)


def test_bytes_are_pq2s_and_only_unit_vectors_are_stored(tmp_path) -> None:
    assert embedding_bytes(16, 384, "apq2") == embedding_bytes(16, 384, "pq2") == embedding_bytes(16, 384, "float16") // 8
    with pytest.raises(InputError, match="stores unit vectors .* norm of 2"):
        get_codec("apq2").fit(2 * unit_vectors(0, 400, 16))
    codec = get_codec("apq2").fit(unit_vectors(0, 400, 16))
    with pytest.raises(InputError, match="stores unit vectors"):
        codec.encode(0.5 * unit_vectors(1, 3, 16))
    with pytest.raises(ValueError, match="'eta'"):
        codec.with_state({"centroids": codec.state()["centroids"]})
    index = MultiVectorIndex.create(tmp_path / "raw", dim=16, num_vectors=4, dtype="apq2")
    with pytest.raises(InputError, match="stores unit vectors"):
        index.add([f"d{i}" for i in range(80)], 3 * unit_vectors(0, 80, 4, 16))
    assert len(index) == 0
    index.close()


@pytest.fixture
def apq2_index(tmp_path):
    """An index of 200 candidates x 8 clustered vectors of D = 32 in apq2, its codebooks learnt from the first add."""
    ids = [f"doc-{i}" for i in range(200)]
    candidates, queries = clustered(10, 200, 8, 32), clustered(11, 12, 4, 32)
    index = built_in_two_adds(tmp_path / "apq2.index", "apq2", ids, candidates, 150)  # 1,200 vectors: the training sample
    yield index, ids, candidates, queries
    index.close()


def test_search_stays_close_to_exact_and_closer_than_pq2(apq2_index, tmp_path) -> None:
    index, ids, candidates, queries = apq2_index
    plain = built_in_two_adds(tmp_path / "pq2.index", "pq2", ids, candidates, 150)
    overlaps = {"apq2": [], "pq2": []}
    for budget in (Budget(1, 1), Budget(2, 4), Budget(4, 8)):
        exact = [{i for i, _ in row} for row in brute_force(queries, candidates, ids, budget.r_q, budget.r_c, 10)]
        for name, opened in (("apq2", index), ("pq2", plain)):
            found = opened.search_batch(queries[:, : budget.r_q], 10, budget)
            overlaps[name].append(np.mean([len({h.id for h in row} & truth) / 10 for row, truth in zip(found, exact)]))
    plain.close()
    assert min(overlaps["apq2"]) >= 0.7
    assert np.mean(overlaps["apq2"]) > np.mean(overlaps["pq2"])
    # the search scores the decoded vectors exactly (float64 reference over what the index holds)
    held = index.vectors(ids)
    assert torch.allclose(held.norm(dim=-1), torch.ones(200, 8), atol=1e-5)
    found = index.search_batch(queries, 10, Budget(4, 8))
    for hits, reference in zip(found, brute_force(queries, held, ids, 4, 8, 10)):
        assert [h.id for h in hits] == [i for i, _ in reference]


def test_the_codebook_file_is_checked_and_a_damaged_one_detected(apq2_index, tmp_path) -> None:
    index, ids, candidates, queries = apq2_index
    before = [[h.id for h in row] for row in index.search_batch(queries, 5, Budget(2, 4))]
    index.save(tmp_path / "copy.index")
    index.close()
    assert MultiVectorIndex.check(tmp_path / "copy.index") == []
    with MultiVectorIndex.open(tmp_path / "copy.index") as reopened:
        assert reopened.dtype == "apq2"
        assert [[h.id for h in row] for row in reopened.search_batch(queries, 5, Budget(2, 4))] == before
    (state,) = (tmp_path / "copy.index").glob("codec-*.npz")
    data = bytearray(state.read_bytes())
    data[len(data) // 3] ^= 0x04
    state.write_bytes(bytes(data))
    damage = MultiVectorIndex.check(tmp_path / "copy.index")
    assert [d.kind for d in damage] == ["config"] and "checksum" in damage[0].message
    with pytest.raises(IndexCorruptError, match="apq2 codebook file fails its checksum"):
        MultiVectorIndex.open(tmp_path / "copy.index")
