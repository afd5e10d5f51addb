"""Per-collection PCA rotation and funnel search (fake embedder for the plumbing; real FAISS and SQLite)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.errors import Conflict, InvalidInput
from indexer import rotation
from indexer.fake_embedder import FakeEmbedder
from indexer.funnel import FunnelStore
from indexer.manifest import Manifest
from indexer.service import IndexerService
from tests.unit.test_index_service import crash, make_docs, make_service

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
DIM, D = 32, 8  # fake model dim, collection dims (fit once it holds 2 * 8 = 16 chunks)


def anisotropic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors whose variance differs per direction (like real embeddings), in a random basis."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) * np.linspace(3.0, 0.1, dim) + 0.5
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    x = (x @ basis).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("centred", [True, False])
def test_rotation_is_orthogonal_and_sorted(centred: bool) -> None:
    rot = rotation.fit(anisotropic(2000, 64), 1, centred=centred)
    r = rot.matrix.astype(np.float64)
    # float32 copy of an orthonormal float64 basis: each entry rounds by <= 6e-8 relative, so R^T R is I up
    # to ~dim * 6e-8 ~ 4e-6; 1e-5 leaves room and still fails for any non-orthogonal matrix
    np.testing.assert_allclose(r.T @ r, np.eye(64), atol=1e-5)
    np.testing.assert_allclose(r @ r.T, np.eye(64), atol=1e-5)
    assert np.all(np.diff(rot.explained) <= 1e-6)  # largest variance first
    assert rot.explained[0] > 10 * rot.explained[-1]


def test_full_dim_scores_unchanged_by_rotation() -> None:
    docs, queries = anisotropic(500, 64, 1), anisotropic(20, 64, 2)
    rot = rotation.fit(docs, 1)
    before = queries @ docs.T
    after = rot.apply(queries) @ rot.apply(docs).T
    # unit vectors, float32: each dot product sums 64 products with rounding ~6e-8 each, plus the
    # rotation's own 1e-5-level orthogonality error; 1e-5 absolute is a few times that bound
    np.testing.assert_allclose(after, before, atol=1e-5)
    # truncation after rotation keeps more of the score than raw truncation (the point of rotating)
    raw = queries[:, :8] @ docs[:, :8].T
    rot8 = rot.apply(queries)[:, :8] @ rot.apply(docs)[:, :8].T
    assert np.abs(rot8 - before).mean() < np.abs(raw - before).mean()


def test_rotation_file_roundtrip_and_cleanup(tmp_path: Path) -> None:
    rot = rotation.fit(anisotropic(300, 16), 3)
    rotation.save(tmp_path, rot)
    (tmp_path / ".rotation-4.tmp").write_bytes(b"torn")
    rotation.save(tmp_path, rotation.fit(anisotropic(300, 16, 5), 2))
    back = rotation.load(tmp_path, 3)
    np.testing.assert_array_equal(back.matrix, rot.matrix)
    assert (back.version, back.n_fit, back.centred) == (3, 300, True)
    rotation.cleanup(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotation-3.npz"]


def test_funnel_store_sq8_error_bound(tmp_path: Path) -> None:
    x = anisotropic(1000, 32)
    fs = FunnelStore(32)
    fs.train(x)
    fs.add(np.arange(1000), x)
    fs.remove(np.asarray([5, 6]))
    got, dec = fs.vectors(np.asarray([4, 5, 7]))
    assert got.tolist() == [4, 7]
    assert np.all(np.abs(dec - x[[4, 7]]) <= fs.scale / 2 + 1e-6)  # half a quantisation step per dim
    q = x[0]
    ids_ip, ip = fs.inner_products(np.asarray([4, 5, 7]), q)
    assert ids_ip.tolist() == [4, 7]
    np.testing.assert_allclose(ip, dec @ q, atol=1e-5)  # same decoded values, summed in another order
    fs.add(np.asarray([3, 2000]), x[[10, 11]])  # replace 3 (an id below the largest: re-sort) + append
    fs.remove(np.arange(500, 800))  # past 20% dead: compaction
    assert len(fs) == 699 and fs._n == 699
    got, dec = fs.vectors(np.asarray([2000, 3, 499, 500, 999]))
    assert got.tolist() == [2000, 3, 499, 999]
    assert np.all(np.abs(dec - x[[11, 10, 499, 999]]) <= fs.scale / 2 + 1e-6)
    fs.save(tmp_path)
    back = FunnelStore.load(tmp_path)
    assert len(back) == 699
    np.testing.assert_array_equal(back.vectors(np.asarray([7]))[1], fs.vectors(np.asarray([7]))[1])


async def rotated_service(tmp_path: Path, n: int = 120) -> IndexerService:
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM), rotation_min_chunks=0)
    await svc.create_collection("c", model="fake", dims=D)
    await svc.upsert("c", make_docs(n))
    return svc


def exact(svc: IndexerService, q: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    """Brute-force full-dim cosine over the stored (unrotated) vectors, per document."""
    coll = svc._collections["c"]
    ids, vecs = [], []
    for cids, v in coll.store.iter_all_chunks():
        ids += [int(c) for c in cids]
        vecs.append(v)
    scores = np.concatenate(vecs) @ q
    rows = coll.store.chunk_rows(ids, with_text=False)
    order = np.argsort(-scores, kind="stable")[:k]
    return [rows[ids[i]]["id"] for i in order], scores[order]


async def test_serves_full_dims_until_fit_then_funnel_all_equals_exact(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM), rotation_min_chunks=100)
    info = await svc.create_collection("c", model="fake", dims=D)
    assert info["rotate"] is True and info["query_dims"] == DIM
    await svc.upsert("c", make_docs(90))  # 90 chunks < max(2 * 8, 100): no rotation yet, full dims
    rinfo = await svc.rotation_info("c")
    assert (rinfo["version"], rinfo["index_dims"], rinfo["fit_at_chunks"]) == (0, DIM, 100)
    assert len(await svc.search_dense("c", [1.0] * DIM, k=3)) == 3
    await svc.upsert("c", make_docs(30, start=90))
    rinfo = await svc.rotation_info("c")
    assert (rinfo["version"], rinfo["index_dims"], rinfo["funnel_vectors"]) == (1, D, 120)
    assert Manifest.load(tmp_path / "collections" / "c" / "manifest.json").rotation_version == 1

    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    for text in ("protein cell gene", "virus cancer tok7", "drug trial mouse heart"):
        q = fake.encode([text])[0]
        want_ids, want_scores = exact(svc, q, 10)
        hits = await svc.search_dense("c", q.tolist(), k=10, funnel_m=10_000)
        coll = svc._collections["c"]
        assert coll.funnel is not None
        # SQ8 error: |q.x - q.x_hat| <= sum_i |qr_i| * scale_i / 2 (qr = rotated query), per candidate
        bound = float(np.abs(coll.rotation.apply(q[None])[0]) @ coll.funnel.scale / 2)  # type: ignore[union-attr]
        got = {h.id: h.score for h in hits}
        for i, s in zip(want_ids, want_scores, strict=True):
            if i in got:
                assert abs(got[i] - s) <= bound + 1e-6
        # documents whose exact score clears the 10th by more than twice the bound must all be there
        sure = [i for i, s in zip(want_ids, want_scores, strict=True) if s - want_scores[-1] > 2 * bound]
        assert set(sure) <= set(got)
        # d-dim only (funnel_m=0) is a different ranking on at least one of these queries in general; the
        # rotated+truncated d-dim query is also accepted directly
        low = coll.rotation.truncate(q[None], D, True)[0]  # type: ignore[union-attr]
        assert len(await svc.search_dense("c", low.tolist(), k=5)) == 5
    await svc.close()


async def test_funnel_m_validation_and_refit(tmp_path: Path) -> None:
    svc = await rotated_service(tmp_path)
    q = [1.0] * DIM
    with pytest.raises(InvalidInput):
        await svc.search_dense("c", q, k=5, funnel_m=-1)
    with pytest.raises(InvalidInput):
        await svc.search_dense("c", [1.0] * 5, k=5)
    with pytest.raises(InvalidInput):
        await svc.search_dense("c", q, k=5, funnel_dims=D + 1)
    # a shorter shortlist prefix with every candidate re-scored ranks exactly like the full prefix
    every = [(h.id, h.score) for h in await svc.search_dense("c", q, k=10, funnel_m=10_000)]
    short = [(h.id, h.score) for h in await svc.search_dense("c", q, k=10, funnel_m=10_000, funnel_dims=2)]
    assert short == every
    same = await svc.search_dense("c", q, k=10, funnel_dims=D)
    assert [h.id for h in same] == [h.id for h in await svc.search_dense("c", q, k=10)]
    before = await svc.rotation_info("c")
    await svc.upsert("c", make_docs(200, start=1000, prefix="e"))
    res = await svc.refit_rotation("c")
    assert res["version"] == before["version"] + 1 and res["n_fit"] == 320
    assert sorted(p.name for p in (tmp_path / "collections" / "c").glob("rotation-*")) == ["rotation-2.npz"]
    await svc.create_collection("plain", model="fake")
    with pytest.raises(InvalidInput):
        await svc.refit_rotation("plain")
    await svc.close()
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM))  # reopen: snapshot of rotation 2 loads
    assert (await svc.rotation_info("c"))["version"] == 2
    assert len(await svc.search_dense("c", q, k=5)) == 5
    await svc.close()


async def test_refit_failure_before_commit_keeps_old_rotation(tmp_path: Path, monkeypatch: Any) -> None:
    svc = await rotated_service(tmp_path)
    q = FakeEmbedder(dim=DIM).encode(["protein gene"])[0].tolist()
    want = [(h.id, h.score) for h in await svc.search_dense("c", q, k=10)]

    def boom(self: Manifest, path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Manifest, "save", boom)
    with pytest.raises(OSError):
        await svc.refit_rotation("c")
    monkeypatch.undo()
    assert (await svc.rotation_info("c"))["version"] == 1
    assert [(h.id, h.score) for h in await svc.search_dense("c", q, k=10)] == want
    crash(svc)
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM))
    assert (await svc.rotation_info("c"))["version"] == 1
    assert [p.name for p in (tmp_path / "collections" / "c").glob("rotation-*")] == ["rotation-1.npz"]
    assert [h.id for h in await svc.search_dense("c", q, k=10)] == [i for i, _ in want]
    await svc.close()


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from indexer.collection import Collection
    from indexer.fake_embedder import FakeEmbedder
    from indexer.manifest import Manifest
    from indexer.service import IndexerService

    where = sys.argv[2]
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "before_commit":
        Manifest.save = die  # rotation-2.npz written, manifest not yet switched
    else:
        Collection._after_install = die  # manifest switched, no snapshot of the new rotation yet

    async def main():
        svc = IndexerService(Path(sys.argv[1]), FakeEmbedder(dim=32))
        await svc.open()
        await svc.refit_rotation("c")

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("where,version", [("before_commit", 1), ("after_commit", 2)])
async def test_kill_during_refit(tmp_path: Path, where: str, version: int) -> None:
    svc = await rotated_service(tmp_path)
    q = FakeEmbedder(dim=DIM).encode(["virus cancer"])[0].tolist()
    want = [h.id for h in await svc.search_dense("c", q, k=10, funnel_m=10_000)]
    await svc.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), where], env=env, timeout=60
    )
    assert proc.returncode == -9
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM))
    info = await svc.rotation_info("c")
    assert info["version"] == version and info["index_dims"] == D and info["funnel_vectors"] == 120
    st = (await svc.collection_info("c"))["stats"]
    assert st["chunks"] == st["dense_vectors"] == 120
    # the same documents fit the same way (deterministic PCA of the same vectors): same exact top-10
    assert [h.id for h in await svc.search_dense("c", q, k=10, funnel_m=10_000)] == want
    assert [p.name for p in (tmp_path / "collections" / "c").glob("rotation-*")] == [
        f"rotation-{version}.npz"
    ]
    await svc.close()


async def test_rotate_needs_smaller_dims(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM))
    with pytest.raises(InvalidInput):
        await svc.create_collection("x", model="fake", rotate=True)
    info = await svc.create_collection("y", model="fake", dims=D, rotate=False)
    assert info["rotate"] is False and info["query_dims"] == D
    # exist_ok without rotate matches the non-rotating collection (created before rotations existed)
    assert (await svc.create_collection("y", model="fake", dims=D, exist_ok=True))["rotate"] is False
    with pytest.raises(Conflict):
        await svc.create_collection("y", model="fake", dims=D, exist_ok=True, rotate=True)
    with pytest.raises(Conflict):
        await svc.create_collection("z", model="fake", dims=D)
        await svc.refit_rotation("z")  # empty: too few vectors
    await svc.close()


async def test_rotation_routes(tmp_path: Path) -> None:
    import httpx
    from fastapi import FastAPI

    from services import indexer_api
    from services.errors import install_error_handlers

    svc = IndexerService(tmp_path, FakeEmbedder(), rotation_min_chunks=0)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(indexer_api.router)
    app.state.indexer_service = svc
    await svc.open()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/collections", json={"name": "r", "model": "fake", "dims": 8})
        assert r.status_code == 201 and r.json()["rotate"] is True, r.text
        r = await c.post("/v1/collections/r/rotation/refit")
        assert r.status_code == 409 and r.json()["error"]["field"] == "collection"  # empty: nothing to fit
        docs = [{"id": f"d{i}", "text": f"tok{i} alpha beta gamma {i % 7}"} for i in range(20)]
        assert (await c.post("/v1/collections/r/documents", json={"documents": docs})).status_code == 200
        r = await c.get("/v1/collections/r/rotation")
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["index_dims"] == 8
        r = await c.post("/v1/collections/r/rotation/refit")
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        q = [0.1] * 32
        r = await c.post("/v1/collections/r/search/dense", json={"vector": q, "k": 3, "funnel_m": 50})
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
        r = await c.post("/v1/collections/r/search/dense", json={"vector": q, "k": 3, "funnel_m": 10**6})
        assert r.status_code == 422 and r.json()["error"]["field"] == "funnel_m"
        r = await c.get("/v1/collections/nope/rotation")
        assert r.status_code == 404
    await svc.close()


async def test_cli_rotation_refit_on_stopped_data_dir(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from services.cli import app

    svc = await rotated_service(tmp_path)
    await svc.create_collection("plain", model="fake")
    await svc.close()
    runner = CliRunner()
    res = runner.invoke(app, ["rotation", "c", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["version"] == 1
    res = runner.invoke(app, ["rotation", "c", "--refit", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["version"] == 2
    assert Manifest.load(tmp_path / "collections" / "c" / "manifest.json").rotation_version == 2
    assert runner.invoke(app, ["rotation", "plain", "--refit", "--data-dir", str(tmp_path)]).exit_code != 0
    assert runner.invoke(app, ["rotation", "nope", "--data-dir", str(tmp_path)]).exit_code != 0


async def test_missing_funnel_file_rebuilds_from_sqlite(tmp_path: Path) -> None:
    svc = await rotated_service(tmp_path)
    q = FakeEmbedder(dim=DIM).encode(["gene trial"])[0].tolist()
    want = [(h.id, h.score) for h in await svc.search_dense("c", q, k=10)]
    await svc.close()
    snaps = list((tmp_path / "collections" / "c").glob("dense-*/funnel.npz"))
    assert len(snaps) == 1
    snaps[0].unlink()
    svc = await make_service(tmp_path, FakeEmbedder(dim=DIM))
    assert (await svc.rotation_info("c"))["funnel_vectors"] == 120
    got = [(h.id, h.score) for h in await svc.search_dense("c", q, k=10)]
    assert [i for i, _ in got] == [i for i, _ in want]
    # same vectors, same SQ8 training sample: the same scores up to float32 summation order
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    await svc.close()
