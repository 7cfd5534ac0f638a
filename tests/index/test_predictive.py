"""Predictive product quantisation (``ppq2`` / ``ppq4``): allocation, the byte stream, the index built with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.index.codecs import get_codec
from metaembed.index.codecs.predictive import allocate

from .conftest import built_in_two_adds, search_matches_brute_force, survives_merge_save_and_reopen, unit_vectors


def grouped_items(seed: int, items: int, count: int = 8, dim: int = 32) -> torch.Tensor:
    """Unit items ``(items, count, dim)`` shaped like MetaEmbed's: vectors 0 and 3 new, the others near copies of one of them."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(items, count, dim)
    out[:, 0] = torch.randn(items, dim, generator=generator)
    for j in range(1, count):
        source = 0 if j % 2 == 0 else min(j, 3) if j < 3 else 3
        fresh = torch.randn(items, dim, generator=generator)
        out[:, j] = fresh if j in (1, 3) else out[:, source] + 0.15 * fresh * out[:, source].norm(dim=-1, keepdim=True) / dim**0.5
        out[:, j] /= out[:, j].norm(dim=-1, keepdim=True)
    out[:, 0] /= out[:, 0].norm(dim=-1, keepdim=True)
    return out


def test_allocation_fills_the_budget_and_follows_the_residual_scales() -> None:
    scales = np.array([1.0, 0.9, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1])
    widths = allocate(scales, 32, 8 * 8, 16)  # 2 bits a value on average: 8 bytes a vector
    assert widths[0] == 16 and sum(widths) <= 64 and all(32 % w == 0 for w in widths)
    assert widths[1] >= widths[3] > max(widths[j] for j in (2, 4, 5, 6, 7))  # new information gets the bytes
    assert sum(widths) > 64 - 8  # no upgrade that fits is left untaken
    with pytest.raises(InputError, match="need at least"):
        allocate(scales, 32, 20, 16)


@pytest.fixture(scope="module")
def fitted():
    items = grouped_items(0, 600)
    return get_codec("ppq2").fit(items), items


def test_codes_are_one_stream_and_a_prefix_decodes_alone(fitted) -> None:
    codec, items = fitted
    codes, scales = codec.encode(items.transpose(0, 1))
    assert scales is None and codes.dtype == np.uint8 and codes.shape == (8, 600, 8)  # R slabs of D * 2 / 8 bytes
    assert codec.widths[0] == 32 and sum(codec.widths) <= 64  # vector 0 at a byte a value; the item at pq2's bytes
    assert [codec.slots(r) for r in range(1, 9)] == sorted(codec.slots(r) for r in range(1, 9))
    assert codec.slots(1) == 4 and codec.slots(8) == 8
    assert codec.bytes_per_item(1, 32) == 32 and codec.bytes_per_item(8, 32) == 64 == get_codec("pq2").bytes_per_item(8, 32)
    whole = codec.decode(codes, None)
    assert whole.shape == (8, 600, 32)
    for r_c in (1, 2, 4, 5):
        part = codec.decode_prefix(codes[: codec.slots(r_c)], None, r_c)
        torch.testing.assert_close(part, whole[:r_c], rtol=0, atol=0)
    torch.testing.assert_close(whole.norm(dim=-1), torch.ones(8, 600))  # unit vectors in, unit vectors out
    with pytest.raises(ValueError, match="need 4 slabs"):
        codec.decode_prefix(codes[:2], None, 1)


def test_prediction_codes_correlated_items_better_than_pq2_at_the_same_bytes(fitted) -> None:
    codec, items = fitted
    test = grouped_items(1, 400)
    ppq = codec.decode(codec.encode(test.transpose(0, 1))[0], None).transpose(0, 1)
    pq2 = get_codec("pq2").fit(items)
    plain = pq2.decode(pq2.encode(test)[0], None)
    ppq_error, pq_error = ((ppq - test) ** 2).sum(-1).mean(0), ((plain - test) ** 2).sum(-1).mean(0)
    assert float(ppq_error[0]) < 0.25 * float(pq_error[0])  # vector 0 has four times the bytes
    assert float(ppq_error.mean()) < 0.5 * float(pq_error.mean())
    # the state round-trips and refits identically (seeded)
    again = get_codec("ppq2").with_state(codec.state())
    np.testing.assert_array_equal(again.encode(test.transpose(0, 1))[0], codec.encode(test.transpose(0, 1))[0])
    refit = get_codec("ppq2").fit(items)
    np.testing.assert_array_equal(refit.state()["weights"], codec.state()["weights"])


def test_bad_inputs_are_one_line_errors(fitted) -> None:
    codec, items = fitted
    with pytest.raises(InputError, match="at least 256 items, got 40"):
        get_codec("ppq2").fit(items[:40])
    with pytest.raises(InputError, match=r"whole items \(n, R, D\)"):
        get_codec("ppq2").fit(items.reshape(-1, 32))
    with pytest.raises(InputError, match="multiple of 8"):
        get_codec("ppq2").fit(unit_vectors(0, 300, 4, 12))
    with pytest.raises(InputError, match="no codebooks yet"):
        get_codec("ppq2").encode(items.transpose(0, 1))
    with pytest.raises(InputError, match="trained on unit vectors"):
        codec.encode(2 * items[:5].transpose(0, 1))
    with pytest.raises(InputError, match="items of 8 vectors of dim 32"):
        codec.encode(items[:5, :4].transpose(0, 1))
    state = codec.state()
    state["weights"] = state["weights"][:4]
    with pytest.raises(ValueError, match="does not fit"):
        get_codec("ppq2").with_state(state)
    with pytest.raises(InputError, match="2 or 4 bits"):
        type(codec)(3)


@pytest.fixture
def ppq_index(tmp_path):
    ids = [f"doc-{i}" for i in range(400)]
    candidates, queries = grouped_items(2, 400), unit_vectors(3, 6, 4, 32)
    index = built_in_two_adds(tmp_path / "ppq.index", "ppq2", ids, candidates, 300)  # 300 items: the training sample
    yield index, ids, candidates, queries
    index.close()


def test_search_equals_brute_force_over_the_decoded_vectors(ppq_index, tmp_path, monkeypatch) -> None:
    index, ids, candidates, queries = ppq_index
    decoded = index.vectors(ids)
    exported = torch.cat([vectors for _, vectors in index.export(batch=64)])
    torch.testing.assert_close(exported, decoded, rtol=0, atol=0)
    assert (decoded - candidates).pow(2).sum(-1).mean() < 0.05
    search_matches_brute_force(index, queries, decoded, ids)
    exact = [[h.id for h in row] for row in index.search_batch(queries, 10, Budget(4, 8))]
    for mode in ("coarse", "ann"):  # first stages read vector 0 from its slabs; with everything shortlisted, exact
        found = index.search_batch(queries, 10, Budget(4, 8), mode=mode, shortlist=len(ids))
        assert [[h.id for h in row] for row in found] == exact
    # decoding in small chunks, as the kernel's tasks do, changes nothing
    import metaembed.scoring.kernel as scoring

    monkeypatch.setattr(scoring, "_DECODE_BYTES", 8 * 32 * 4 * 16)
    assert [[h.id for h in row] for row in index.search_batch(queries, 10, Budget(4, 8))] == exact
    assert index.memory_bytes(Budget(1, 1)) < index.memory_bytes(Budget(8, 8)) == 400 * 64


def test_the_state_survives_reopen_merge_and_save(ppq_index, tmp_path) -> None:
    index, ids, candidates, queries = ppq_index
    survives_merge_save_and_reopen(index, ids, candidates, queries, 350, tmp_path / "copy.index")


@pytest.mark.parametrize("run", [1, 2, 3, 6, 12, 16])
def test_the_nearest_centroid_search_is_exact_for_every_run_length(run: int) -> None:
    from metaembed.index.codecs.pq import train_codebooks
    from metaembed.index.codecs.predictive import nearest_search

    vectors = torch.randn(3000, 48, generator=torch.Generator().manual_seed(run))
    centroids = train_codebooks(vectors[:1000], run)  # runs of 1 search by bisection, 3/6/12 zero-padded for FAISS
    codes = nearest_search(centroids)(vectors)
    distances = ((vectors.view(-1, 48 // run, 1, run) - torch.from_numpy(centroids)[None]) ** 2).sum(-1)
    assert codes.dtype == np.uint8 and (codes == distances.argmin(-1).numpy()).mean() > 0.999
