"""The compiled apq2 encoder (metaembed/native/apq.c) against the codec's torch path, which stays
the fallback where the extension is not built."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from metaembed import native
from metaembed.index.codecs import get_codec
from metaembed.index.codecs.anisotropic import PASSES

from ..index.test_anisotropic import _loss, clustered

needs_encoder = pytest.mark.skipif(not native.apq_available(), reason="the compiled apq2 encoder is not built here")


def _raw(codec, codes: np.ndarray) -> np.ndarray:
    """The centroids of ``codes`` side by side (before the unit-length rescaling), float64."""
    centroids = codec.state()["centroids"].astype(np.float64)
    return np.concatenate([centroids[m][codes[:, m]] for m in range(codes.shape[1])], axis=1)


@needs_encoder
@pytest.mark.parametrize("dim", [8, 32, 384])
def test_the_compiled_encoder_chooses_the_torch_paths_codes(monkeypatch, dim: int) -> None:
    vectors = clustered(dim, 3000, dim)
    codec = get_codec("apq2").fit(vectors[:2000])
    fresh = vectors[2000:]
    compiled, _ = codec.encode(fresh)
    monkeypatch.setenv("METAEMBED_NATIVE", "0")
    assert not native.apq_available()
    reference, _ = codec.encode(fresh)
    assert compiled.dtype == reference.dtype == np.uint8 and compiled.shape == reference.shape == (1000, dim // 4)
    # the same descent in another summation order: a near-tie may go the other way, nothing more
    assert (compiled == reference).mean() >= 0.999
    x = fresh.numpy().astype(np.float64)
    ours, theirs = _loss(x, _raw(codec, compiled), codec.eta), _loss(x, _raw(codec, reference), codec.eta)
    np.testing.assert_allclose(ours.mean(), theirs.mean(), rtol=1e-5)


@needs_encoder
def test_the_compiled_encoder_spreads_chunks_over_threads_and_keeps_their_order(monkeypatch) -> None:
    from metaembed.index.codecs import anisotropic

    monkeypatch.setattr(anisotropic, "_CHUNK", 7)  # many small chunks, handed out dynamically
    vectors = clustered(5, 600, 16)
    codec = get_codec("apq2").fit(vectors[:400])
    chunked, _ = codec.encode(vectors[400:].reshape(50, 4, 16))
    whole = native.apq_encode(vectors[400:], torch.from_numpy(codec.state()["centroids"]), codec.eta, PASSES)
    assert chunked.shape == (50, 4, 4)
    np.testing.assert_array_equal(chunked.reshape(200, 4), whole.numpy())


@needs_encoder
def test_the_compiled_encoder_refuses_shapes_it_does_not_code() -> None:
    centroids = torch.randn(2, 256, 4)
    with pytest.raises(ValueError, match="apq_encode needs"):
        native.apq_encode(torch.randn(3, 12), centroids, 4.0, PASSES)
    with pytest.raises(ValueError, match="apq_encode needs"):
        native.apq_encode(torch.randn(3, 8, dtype=torch.float64), centroids, 4.0, PASSES)


def test_switched_off_or_missing_the_torch_path_codes(monkeypatch) -> None:
    vectors = clustered(6, 500, 8)
    codec = get_codec("apq2").fit(vectors[:400])
    monkeypatch.setattr(native, "_apq", None)  # an install without a C compiler
    assert not native.apq_available()
    with pytest.raises(native.NativeUnsupported, match="not available"):
        native.apq_encode(vectors, torch.from_numpy(codec.state()["centroids"]), codec.eta, PASSES)
    codes, _ = codec.encode(vectors[400:])
    assert codes.shape == (100, 2)


def test_the_encoder_is_built_wherever_a_compiler_is(monkeypatch) -> None:
    # optional so installs without a compiler succeed; with one, a missing encoder is a broken build
    if not shutil.which("cc"):
        pytest.skip("no C compiler here: the torch path is expected")
    monkeypatch.delenv("METAEMBED_NATIVE", raising=False)
    assert native._apq is not None, "metaembed/native/apq.c was not compiled by the install"
