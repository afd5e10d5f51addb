"""Fusion as pure functions: hand-built lists, tie-breaks, and agreement with ranx.fuse."""

from __future__ import annotations

import random

import pytest

from gateway import fusion

BM25 = [("a", 12.0), ("b", 9.5), ("c", 7.0), ("d", 3.0)]
DENSE = [("c", 0.91), ("e", 0.80), ("a", 0.75)]


def ids(recs: list[fusion.Fused]) -> list[str]:
    return [r.id for r in recs]


def test_rrf_hand_computed() -> None:
    out = fusion.rrf([BM25, DENSE], k=60)
    got = {r.id: r.score for r in out}
    # a: rank 1 + rank 3; c: rank 3 + rank 1 -> equal sums, tie broken by per-list ranks (BM25 first)
    assert got["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert got["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert got["b"] == pytest.approx(1 / 62)
    assert got["e"] == pytest.approx(1 / 62)
    assert got["d"] == pytest.approx(1 / 64)
    assert ids(out) == ["a", "c", "b", "e", "d"]
    a = out[0]
    assert a.ranks == [1, 3] and a.scores == [12.0, 0.75]
    e = next(r for r in out if r.id == "e")
    assert e.ranks == [None, 2] and e.scores == [None, 0.80]


def test_rrf_k_changes_scores_not_single_list_order() -> None:
    one = fusion.rrf([BM25], k=0)
    assert ids(one) == ["a", "b", "c", "d"]
    assert one[0].score == pytest.approx(1.0)


def test_rrf_weights_and_validation() -> None:
    out = fusion.rrf([BM25, DENSE], k=60, weights=[0.0, 1.0])
    assert ids(out)[:3] == ["c", "e", "a"]
    with pytest.raises(ValueError):
        fusion.rrf([BM25], weights=[1.0, 2.0])
    with pytest.raises(ValueError):
        fusion.rrf([BM25], k=-1)


def test_tie_break_is_deterministic_under_input_permutation() -> None:
    # Two single-retriever hits at rank 1 tie exactly; the earlier retriever wins, then id order.
    out = fusion.rrf([[("x", 1.0)], [("y", 1.0)]], k=60)
    assert ids(out) == ["x", "y"]
    same_rank = fusion.rrf([[("q", 1.0), ("p", 0.5)], [("m", 1.0), ("n", 0.5)]])
    assert ids(same_rank) == ["q", "m", "p", "n"]
    # a document found by both lists beats one found by one list at equal score
    both = fusion.rrf([[("s", 1.0)], [("s", 1.0)]], k=0, weights=[0.5, 0.5])
    solo = fusion.rrf([[("t", 1.0)]], k=0)
    assert both[0].score == solo[0].score
    recs = fusion.sort_fused([solo[0], both[0]])
    assert ids(recs) == ["s", "t"]


def test_minmax_convex_hand_computed() -> None:
    out = fusion.convex_pair(BM25, DENSE, alpha=0.5, normalization="min-max")
    got = {r.id: r.score for r in out}
    # BM25 min-max: a 1, b 6.5/9, c 4/9, d 0; dense: c 1, e 0.05/0.16, a 0
    assert got["a"] == pytest.approx(0.5 * 1 + 0.5 * 0)
    assert got["c"] == pytest.approx(0.5 * 4 / 9 + 0.5 * 1)
    assert got["e"] == pytest.approx(0.5 * (0.05 / 0.16))
    assert got["d"] == pytest.approx(0.0)
    assert ids(out)[0] == "c"


def test_convex_alpha_extremes_reproduce_single_lists() -> None:
    lex_only = fusion.convex_pair(BM25, DENSE, alpha=0.0)
    assert ids(lex_only)[:3] == ["a", "b", "c"]
    dense_only = fusion.convex_pair(BM25, DENSE, alpha=1.0)
    assert ids(dense_only)[:3] == ["c", "e", "a"]
    with pytest.raises(ValueError):
        fusion.convex_pair(BM25, DENSE, alpha=1.5)


def test_zscore_normalisation() -> None:
    z = fusion.normalize([1.0, 2.0, 3.0], "z-score")
    assert z == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert fusion.normalize([5.0, 5.0], "z-score") == [0.0, 0.0]
    assert fusion.normalize([5.0], "min-max") == [1.0]
    assert fusion.normalize([], "min-max") == []
    with pytest.raises(ValueError):
        fusion.normalize([1.0], "softmax")  # type: ignore[arg-type]


def test_duplicates_keep_first_occurrence() -> None:
    out = fusion.rrf([[("a", 3.0), ("a", 1.0), ("b", 0.5)]], k=60)
    assert ids(out) == ["a", "b"]
    assert out[1].ranks == [3]


def test_blend_rerank() -> None:
    first = [3.0, 2.0, 1.0]
    ce = [-1.0, 0.0, 5.0]
    assert fusion.blend_rerank(first, ce, 0.0) == pytest.approx(fusion.normalize(first, "z-score"))
    assert fusion.blend_rerank(first, ce, 1.0) == pytest.approx(fusion.normalize(ce, "z-score"))
    mid = fusion.blend_rerank(first, ce, 0.5)
    assert mid[0] > mid[2] > mid[1]  # z(first) = [1.22, 0, -1.22], z(ce) = [-0.89, -0.51, 1.40]
    with pytest.raises(ValueError):
        fusion.blend_rerank(first, ce[:2], 0.5)


def test_blend_tail_sits_below_the_head() -> None:
    head_first, head_ce, tail_first = [0.9, 0.5, 0.4], [2.0, -3.0, 1.0], [0.4, 0.2, 0.1]
    head = fusion.blend_rerank(head_first, head_ce, 0.3)
    tail = fusion.blend_tail(head_first, head_ce, tail_first, 0.3)
    assert max(tail) <= min(head)
    assert tail == sorted(tail, reverse=True)
    assert fusion.blend_tail(head_first, head_ce, [], 0.3) == []


def _random_lists(rng: random.Random) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    pool = [f"d{i}" for i in range(40)]
    lex = sorted(((d, rng.uniform(0, 30)) for d in rng.sample(pool, rng.randint(2, 25))), key=lambda x: -x[1])
    den = sorted(((d, rng.uniform(-1, 1)) for d in rng.sample(pool, rng.randint(2, 25))), key=lambda x: -x[1])
    return lex, den


@pytest.mark.timeout(300)  # ranx jit-compiles its fusion kernels with numba on first use
def test_agrees_with_ranx_fuse() -> None:
    from ranx import Run, fuse

    rng = random.Random(7)
    for trial in range(25):
        lex, den = _random_lists(rng)
        runs = [Run({"q": dict(lex)}), Run({"q": dict(den)})]
        alpha = rng.random()
        cases = [
            ("rrf", fusion.rrf([lex, den], k=60), fuse(runs, norm=None, method="rrf", params={"k": 60})),
            (
                "min-max",
                fusion.convex_pair(lex, den, alpha, "min-max"),
                fuse(runs, norm="min-max", method="wsum", params={"weights": [1 - alpha, alpha]}),
            ),
            (
                "z-score",
                fusion.convex_pair(lex, den, alpha, "z-score"),
                fuse(runs, norm="zmuv", method="wsum", params={"weights": [1 - alpha, alpha]}),
            ),
        ]
        for name, ours, theirs_run in cases:
            theirs = theirs_run.to_dict()["q"]
            mine = {r.id: r.score for r in ours}
            assert set(mine) == set(theirs), (trial, name)
            for doc, score in theirs.items():
                # ranx computes in float64 in another summation order: agree to 1e-9
                assert mine[doc] == pytest.approx(score, abs=1e-9), (trial, name, doc)
            # our order is ranx's order wherever ranx's scores are distinct
            ordered = sorted(theirs.items(), key=lambda kv: -kv[1])
            for (d1, s1), (d2, s2) in zip(ordered, ordered[1:], strict=False):
                if s1 - s2 > 1e-9:
                    assert ids(ours).index(d1) < ids(ours).index(d2), (trial, name)
