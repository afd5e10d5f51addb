"""Pooling, normalisation and Matryoshka truncation (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.onnx_model import l2_normalize, pool, truncate_dims


def test_mean_pooling_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pool(hidden, mask, "mean", normalize=False)
    np.testing.assert_allclose(out[0], hidden[0, :3].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[1], hidden[1].mean(axis=0), rtol=1e-6)
    # garbage in padded positions must not change the result
    hidden2 = hidden.copy()
    hidden2[0, 3:] = 1e6
    np.testing.assert_array_equal(pool(hidden2, mask, "mean", normalize=False)[0], out[0])


def test_cls_pooling_takes_first_token_and_normalises() -> None:
    hidden = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 1
    out = pool(hidden, np.ones((2, 3), dtype=np.int64), "cls")
    np.testing.assert_allclose(
        out, hidden[:, 0] / np.linalg.norm(hidden[:, 0], axis=1, keepdims=True), rtol=1e-6
    )
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_unknown_pooling_raises() -> None:
    with pytest.raises(ValueError):
        pool(np.zeros((1, 1, 2), dtype=np.float32), np.ones((1, 1)), "max")


def test_l2_normalize_keeps_zero_rows_finite() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32


def test_truncate_dims_renormalises_prefix() -> None:
    rng = np.random.default_rng(1)
    vec = l2_normalize(rng.normal(size=(4, 16)).astype(np.float32))
    cut = truncate_dims(vec, 5)
    assert cut.shape == (4, 5)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-6)
    # same direction as the raw prefix
    cos = (cut * vec[:, :5]).sum(1) / np.linalg.norm(vec[:, :5], axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
    assert truncate_dims(vec, None) is vec
    assert truncate_dims(vec, 16) is vec
