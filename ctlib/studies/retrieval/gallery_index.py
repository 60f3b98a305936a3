"""Gallery index for CT volume retrieval: cosine k-NN with faiss (Johnson et al. 2019, "Billion-scale
similarity search with GPUs") over L2-normalised float32 embeddings, scored by inner product.

Kinds: ``flat`` (``IndexFlatIP``, exact; the reference the others are measured against), ``hnsw``
(``IndexHNSWFlat``, Malkov & Yashunin 2018; parameters ``m``, ``ef_construction``, ``ef_search``) and
``ivf`` (``IndexIVFFlat``, Jégou et al. 2011 inverted file over k-means cells; parameters ``nlist``,
``nprobe``, ``train_size``: the cells are trained on a seeded sample of the gallery). Gallery items
carry string ids; ``search(..., exclude_ids=...)`` removes each query from its own gallery (DESIGN.md,
"Retrieval") and still returns ``k`` results.

Saved as a folder holding ``index.faiss`` (``faiss.write_index``) and the sidecar ``index.json`` (kind,
parameters, dim, count, ids, faiss version, sha256 of the index file), each written atomically; the
checksum ties the pair together so a kill between the two writes is caught on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from ctlib import atomic
from ctlib.errors import CTInputError

Kind = Literal["flat", "hnsw", "ivf"]
INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index.json"
DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 40, "ef_search": 64},
    "ivf": {"nlist": None, "nprobe": 16, "train_size": None, "seed": 0},  # None: 4 sqrt(N), 50 nlist
}
_NORM_TOLERANCE = 1e-4  # rows already this close to unit norm are used as they are (no 2 GB copy)


def _where(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def normalized(
    vectors: np.ndarray, dim: int | None, *, what: str, source: str | os.PathLike | None
) -> np.ndarray:
    """``(N, D)`` float32 C-contiguous rows of unit L2 norm; refuses wrong shapes, non-finite or zero rows."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise CTInputError(_where(source), f"{what} must be a non-empty (N, D) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise CTInputError(_where(source), f"{what} have dim {x.shape[1]}, the index has dim {dim}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # (N,) without an (N, D) temporary
    bad = ~np.isfinite(norms)
    if bad.any():
        row = int(np.argmax(bad))
        problem = "is not finite (NaN or inf)" if not np.isfinite(x[row]).all() else "overflows float32"
        raise CTInputError(_where(source), f"{what} row {row} {problem}")
    if (norms == 0).any():
        raise CTInputError(
            _where(source), f"{what} row {int(np.argmax(norms == 0))} is all zeros (no direction)"
        )
    if np.abs(norms - 1.0).max() <= _NORM_TOLERANCE:
        return x
    x = x.copy() if np.shares_memory(x, vectors) else x
    faiss.normalize_L2(x)
    return x


def _resolve(kind: str, params: dict[str, Any], count: int) -> dict[str, Any]:
    if kind not in DEFAULTS:
        raise ValueError(f"kind must be one of {sorted(DEFAULTS)}, got {kind!r}")
    unknown = sorted(set(params) - set(DEFAULTS[kind]))
    if unknown:
        raise ValueError(f"unknown parameters for kind {kind!r}: {unknown} (known: {sorted(DEFAULTS[kind])})")
    out = {**DEFAULTS[kind], **params}
    if kind == "ivf":
        out["nlist"] = int(out["nlist"] or max(1, round(4 * np.sqrt(count))))
        out["train_size"] = int(min(count, out["train_size"] or 50 * out["nlist"]))
        if out["nlist"] > out["train_size"]:
            raise ValueError(
                f"ivf needs at least nlist={out['nlist']} training vectors, got {out['train_size']}"
            )
    return out


def _apply_search_params(index: faiss.Index, kind: str, params: dict[str, Any]) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivf":
        index.nprobe = int(params["nprobe"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


class GalleryIndex:
    """A faiss index over a gallery of unit embeddings ``(N, D)`` and their string ids ``(N,)``."""

    def __init__(
        self,
        index: faiss.Index,
        ids: np.ndarray,
        kind: str,
        params: dict[str, Any],
        path: str | os.PathLike | None = None,
    ) -> None:
        self.index, self.kind, self.params, self.path = index, kind, params, path
        self.ids = np.asarray(ids, dtype=str)
        self._lookup = np.append(self.ids, "")  # faiss' label -1 (fewer hits than k) maps to ""
        self._position: dict[str, int] | None = None  # id -> row, built on the first exclude_ids search

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str],
        kind: Kind = "flat",
        *,
        threads: int | None = None,
        source: str | os.PathLike | None = None,
        **params: Any,
    ) -> GalleryIndex:
        """Index ``embeddings (N, D)`` (L2-normalised here) under ``ids``; ``source`` names their file in
        errors; ``threads`` sets faiss' OpenMP threads for the whole process (None: faiss' default)."""
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        x = normalized(embeddings, None, what="gallery embeddings", source=source)
        n, dim = x.shape
        id_array = np.asarray(list(ids), dtype=str)
        if id_array.shape != (n,):
            raise CTInputError(_where(source), f"{id_array.size} ids for {n} gallery embeddings")
        if len(np.unique(id_array)) != n:
            raise CTInputError(_where(source), "gallery ids are not unique")
        p = _resolve(kind, params, n)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(p["m"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(p["ef_construction"])
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, p["nlist"], faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(p["seed"])
            sample = x if p["train_size"] >= n else x[np.sort(rng.choice(n, p["train_size"], replace=False))]
            index.train(sample)
        index.add(x)
        _apply_search_params(index, kind, p)
        return cls(index, id_array, kind, p)

    def set_search(self, **params: Any) -> GalleryIndex:
        """Change the search-time parameters (hnsw ``ef_search``, ivf ``nprobe``) in place; returns self."""
        allowed = {"flat": set(), "hnsw": {"ef_search"}, "ivf": {"nprobe"}}[self.kind]
        if set(params) - allowed:
            raise ValueError(
                f"search parameters of kind {self.kind!r} are {sorted(allowed)}, got {sorted(params)}"
            )
        self.params = {**self.params, **params}
        _apply_search_params(self.index, self.kind, self.params)
        return self

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude_ids: Sequence[str | None] | None = None,
        source: str | os.PathLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours of ``queries (Q, D)``: similarities ``(Q, k)`` float32 (descending) and
        ids ``(Q, k)`` str. ``exclude_ids[q]`` (one per query, None for none) is removed from query q's
        results: k + 1 are searched and the query's own id (else the last) dropped. A slot an approximate
        index could not fill has id "" and similarity -inf."""
        where = source if source is not None else self._file()
        q = normalized(queries, self.dim, what="queries", source=where)
        limit = self.count - (exclude_ids is not None)
        if not 1 <= k <= limit:
            raise ValueError(f"k must be in [1, {limit}] for a gallery of {self.count}, got {k}")
        if exclude_ids is None:
            sims, labels = self.index.search(q, k)
        else:
            if len(exclude_ids) != len(q):
                raise ValueError(f"exclude_ids has {len(exclude_ids)} entries for {len(q)} queries")
            if self._position is None:
                self._position = {name: i for i, name in enumerate(self.ids.tolist())}
            own = np.array([self._position.get(name, -2) if name is not None else -2 for name in exclude_ids])
            sims, labels = self.index.search(q, k + 1)
            drop = labels == own[:, None]
            drop[~drop.any(axis=1), -1] = True  # query absent from its top k + 1: drop the (k + 1)-th
            sims, labels = sims[~drop].reshape(len(q), k), labels[~drop].reshape(len(q), k)
        sims = np.where(labels < 0, -np.inf, sims).astype(np.float32)
        return sims, self._lookup[labels]

    def _file(self) -> str | None:
        return None if self.path is None else os.fspath(Path(self.path) / INDEX_FILE)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``index.faiss`` then ``index.json`` into ``directory``, each atomically; returns it."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(folder / INDEX_FILE) as tmp:
            faiss.write_index(self.index, os.fspath(tmp))
            checksum = _sha256(tmp)
        atomic.write_json(
            folder / SIDECAR_FILE,
            {
                "kind": self.kind,
                "params": self.params,
                "dim": self.dim,
                "count": self.count,
                "ids": self.ids.tolist(),
                "faiss_version": faiss.__version__,
                "index_sha256": checksum,
            },
        )
        return folder

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, threads: int | None = None, verify: bool = True
    ) -> GalleryIndex:
        """Read a folder written by ``save``; ``verify`` checks the index file against the sidecar sha256."""
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        folder = Path(directory)
        index_file, sidecar_file = folder / INDEX_FILE, folder / SIDECAR_FILE
        for path in (sidecar_file, index_file):
            if not path.is_file():
                raise CTInputError(path, "missing (a gallery index folder holds index.faiss and index.json)")
        try:
            meta = json.loads(sidecar_file.read_text())
            kind, params, dim, count, ids = (meta[key] for key in ("kind", "params", "dim", "count", "ids"))
        except (ValueError, KeyError, TypeError) as err:
            raise CTInputError(
                sidecar_file, f"unreadable gallery index sidecar ({type(err).__name__}: {err})"
            ) from err
        if kind not in DEFAULTS:
            raise CTInputError(
                sidecar_file, f"unknown index kind {kind!r} (expected one of {sorted(DEFAULTS)})"
            )
        if len(ids) != count:
            raise CTInputError(sidecar_file, f"count mismatch: {len(ids)} ids for count {count}")
        if verify and meta.get("index_sha256") and _sha256(index_file) != meta["index_sha256"]:
            raise CTInputError(index_file, f"does not match its sidecar {SIDECAR_FILE} (sha256 differs)")
        try:
            index = faiss.read_index(os.fspath(index_file))
        except RuntimeError as err:
            raise CTInputError(index_file, f"unreadable faiss index ({str(err).splitlines()[0]})") from err
        if index.d != dim:
            raise CTInputError(
                index_file, f"dim mismatch: the index has dim {index.d}, {SIDECAR_FILE} says {dim}"
            )
        if index.ntotal != count:
            raise CTInputError(
                index_file,
                f"count mismatch: the index holds {index.ntotal} vectors, {SIDECAR_FILE} says {count}",
            )
        expected = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}[kind]
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise CTInputError(
                index_file,
                f"kind mismatch: {SIDECAR_FILE} says {kind} ({expected.__name__}, inner product), the file "
                f"holds {type(index).__name__} with metric {index.metric_type}",
            )
        _apply_search_params(index, kind, params)
        return cls(index, np.asarray(ids, dtype=str), kind, params, path=folder)
