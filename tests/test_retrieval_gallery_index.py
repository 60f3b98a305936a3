"""Retrieval gallery index: flat = brute-force cosine, self-exclusion, HNSW/IVF recall, save/load, errors."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from ctlib.errors import CTInputError
from ctlib.studies.retrieval import gallery_index
from ctlib.studies.retrieval.gallery_index import GalleryIndex

faiss.omp_set_num_threads(1)


def random_gallery(n: int = 200, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, size=(n, 1))  # not normalised: build must normalise
    return (rng.standard_normal((n, dim)) * scale).astype(np.float32), [f"study-{i:04d}" for i in range(n)]


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, dim))
    return x.astype(np.float32)


def brute_force(gallery: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, N) cosine similarities and their descending order, in float64."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    return sims, np.argsort(-sims, axis=1, kind="stable")


def test_flat_equals_brute_force_cosine() -> None:
    gallery, ids = random_gallery()
    queries = np.random.default_rng(1).standard_normal((25, 16)).astype(np.float32) * 7
    index = GalleryIndex.build(gallery, ids, "flat")
    sims, found = index.search(queries, 10)
    ref_sims, order = brute_force(gallery, queries)
    assert sims.shape == (25, 10) and found.shape == (25, 10) and sims.dtype == np.float32
    np.testing.assert_array_equal(found, np.asarray(ids)[order[:, :10]])
    np.testing.assert_allclose(sims, np.take_along_axis(ref_sims, order[:, :10], axis=1), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-7).all()


def test_exclude_ids_drops_the_query_and_keeps_k() -> None:
    gallery, ids = random_gallery()
    k = 7
    index = GalleryIndex.build(gallery, ids, "flat")
    queries = gallery[:30] * 2.0
    sims, found = index.search(queries, k, exclude_ids=ids[:30])
    ref_sims, order = brute_force(gallery, queries)
    assert found.shape == (30, k) and sims.shape == (30, k)
    for q in range(30):
        assert ids[q] not in found[q]
        expected = [j for j in order[q] if j != q][:k]
        assert found[q].tolist() == [ids[j] for j in expected]
        np.testing.assert_allclose(sims[q], ref_sims[q, expected], atol=1e-5)


def test_exclude_ids_without_own_hit_matches_plain_search() -> None:
    """A query not in its top k + 1 (or with no id to exclude) gets the plain top k."""
    gallery, ids = random_gallery()
    index = GalleryIndex.build(gallery, ids, "flat")
    queries = np.stack([-gallery[0], gallery[5], gallery[9]])  # item 0 is the farthest from its query
    plain = index.search(queries, 5)
    excluded = index.search(queries, 5, exclude_ids=[ids[0], None, "not-in-gallery"])
    np.testing.assert_array_equal(excluded[1], plain[1])
    np.testing.assert_array_equal(excluded[0], plain[0])
    with pytest.raises(ValueError, match="k must be in"):
        index.search(queries, 200, exclude_ids=[None, None, None])


@pytest.mark.parametrize(
    ("kind", "params"),
    [("hnsw", {"m": 16, "ef_construction": 40, "ef_search": 64}), ("ivf", {"nlist": 32, "nprobe": 8})],
)
def test_approximate_recall_at_10_against_flat(kind: str, params: dict) -> None:
    points = clustered(2100, 32, clusters=20, seed=0)
    gallery, queries = points[:2000], points[2000:]
    ids = [f"v{i}" for i in range(len(gallery))]
    _, exact = GalleryIndex.build(gallery, ids, "flat").search(queries, 10)
    _, approx = GalleryIndex.build(gallery, ids, kind, **params).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9, recall


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(kind: str, tmp_path) -> None:
    gallery, ids = random_gallery(300, 16)
    queries = np.random.default_rng(3).standard_normal((12, 16)).astype(np.float32)
    params = {"nlist": 8, "nprobe": 3} if kind == "ivf" else {"ef_search": 24} if kind == "hnsw" else {}
    index = GalleryIndex.build(gallery, ids, kind, **params)
    folder = index.save(tmp_path / "gallery")
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "index.json"]  # no temporaries left
    meta = json.loads((folder / "index.json").read_text())
    assert (meta["kind"], meta["dim"], meta["count"], meta["faiss_version"]) == (
        kind,
        16,
        300,
        faiss.__version__,
    )
    assert meta["ids"] == ids
    loaded = GalleryIndex.load(folder)
    assert (loaded.kind, loaded.params, loaded.dim, loaded.count) == (kind, index.params, 16, 300)
    for exclude in (None, ids[:12]):
        before = index.search(queries, 6, exclude_ids=exclude)
        after = loaded.search(queries, 6, exclude_ids=exclude)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[1], before[1])


@pytest.fixture
def saved(tmp_path):
    gallery, ids = random_gallery(50, 8)
    return GalleryIndex.build(gallery, ids, "flat").save(tmp_path / "g"), gallery, ids


@pytest.mark.parametrize("name", ["index.faiss", "index.json"])
def test_load_missing_file_names_it(saved, name: str) -> None:
    folder = saved[0]
    (folder / name).unlink()
    with pytest.raises(CTInputError, match=rf"{name}: missing"):
        GalleryIndex.load(folder)


def test_load_dim_and_count_mismatch_name_the_index_file(saved, tmp_path) -> None:
    folder, _, ids = saved
    other = np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32)
    GalleryIndex.build(other, ids, "flat").save(tmp_path / "other")
    (folder / "index.faiss").write_bytes((tmp_path / "other" / "index.faiss").read_bytes())
    with pytest.raises(CTInputError, match=r"index\.faiss: does not match its sidecar"):
        GalleryIndex.load(folder)
    with pytest.raises(
        CTInputError, match=r"index\.faiss: dim mismatch: the index has dim 4, index.json says 8"
    ):
        GalleryIndex.load(folder, verify=False)
    fewer = np.random.default_rng(6).standard_normal((40, 8)).astype(np.float32)
    GalleryIndex.build(fewer, ids[:40], "flat").save(tmp_path / "fewer")
    (folder / "index.faiss").write_bytes((tmp_path / "fewer" / "index.faiss").read_bytes())
    with pytest.raises(CTInputError, match=r"index\.faiss: count mismatch: the index holds 40 vectors"):
        GalleryIndex.load(folder, verify=False)


def test_load_kind_mismatch_names_the_index_file(saved) -> None:
    folder, gallery, ids = saved
    meta = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**meta, "kind": "hnsw"}))
    with pytest.raises(CTInputError, match=r"index\.faiss: kind mismatch: index.json says hnsw"):
        GalleryIndex.load(folder)
    l2 = faiss.IndexFlatL2(8)
    l2.add(gallery)
    faiss.write_index(l2, str(folder / "index.faiss"))
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(
        CTInputError, match=r"index\.faiss: kind mismatch: .* holds IndexFlatL2 with metric 1"
    ):
        GalleryIndex.load(folder, verify=False)


def test_load_bad_sidecar_and_bad_index_name_the_file(saved) -> None:
    folder = saved[0]
    meta = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**meta, "count": 51}))
    with pytest.raises(CTInputError, match=r"index\.json: count mismatch: 50 ids for count 51"):
        GalleryIndex.load(folder)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(CTInputError, match=r"index\.json: unreadable"):
        GalleryIndex.load(folder)
    (folder / "index.json").write_text(json.dumps(meta))
    (folder / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CTInputError, match=r"index\.faiss: unreadable faiss index"):
        GalleryIndex.load(folder, verify=False)


def test_bad_embeddings_name_their_file(saved) -> None:
    folder, gallery, ids = saved
    broken = gallery.copy()
    broken[3, 2] = np.nan
    with pytest.raises(CTInputError, match=r"emb\.npy: gallery embeddings row 3 is not finite"):
        GalleryIndex.build(broken, ids, source="emb.npy")
    broken[3] = 0.0
    with pytest.raises(CTInputError, match=r"emb\.npy: gallery embeddings row 3 is all zeros"):
        GalleryIndex.build(broken, ids, source="emb.npy")
    with pytest.raises(CTInputError, match=r"emb\.npy: 49 ids for 50"):
        GalleryIndex.build(gallery, ids[:49], source="emb.npy")
    with pytest.raises(CTInputError, match=r"emb\.npy: gallery ids are not unique"):
        GalleryIndex.build(gallery, ids[:49] + ids[:1], source="emb.npy")
    loaded = GalleryIndex.load(folder)
    with pytest.raises(CTInputError, match=r"index\.faiss: queries have dim 9, the index has dim 8"):
        loaded.search(np.ones((2, 9), np.float32), 3)
    with pytest.raises(CTInputError, match=r"q\.npy: queries row 1 is not finite"):
        loaded.search(np.array([[1.0] * 8, [np.inf] * 8], np.float32), 3, source="q.npy")


def test_unknown_kind_and_parameter_are_refused() -> None:
    gallery, ids = random_gallery(20, 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        GalleryIndex.build(gallery, ids, "lsh")
    with pytest.raises(ValueError, match=r"unknown parameters for kind 'hnsw': \['nprobe'\]"):
        GalleryIndex.build(gallery, ids, "hnsw", nprobe=3)
    assert gallery_index.DEFAULTS["hnsw"] == {"m": 32, "ef_construction": 40, "ef_search": 64}


def test_set_search_changes_ivf_nprobe() -> None:
    """IVF probing every cell is exact; probing one cell of many is not."""
    points = clustered(2100, 32, clusters=20, seed=1)
    gallery, queries = points[:2000], points[2000:]
    ids = [f"v{i}" for i in range(len(gallery))]
    _, exact = GalleryIndex.build(gallery, ids, "flat").search(queries, 10)
    index = GalleryIndex.build(gallery, ids, "ivf", nlist=64, nprobe=1)
    assert not np.array_equal(index.search(queries, 10)[1], exact)
    assert index.set_search(nprobe=64).params["nprobe"] == 64
    np.testing.assert_array_equal(index.search(queries, 10)[1], exact)
    with pytest.raises(ValueError, match=r"search parameters of kind 'ivf' are \['nprobe'\]"):
        index.set_search(ef_search=10)
