"""Export a finished run for serving: embeddings with their original ids and every user's top-K.

    itemjax export runs/my-run --out exported/ -k 50 [--faiss]

writes into ``DIR``::

    user_embeddings.npy, item_embeddings.npy   float32 [n_users, d], [n_items, d] (final layer
                                               combination over the training graph)
    users.parquet, items.parquet               row -> original id (``user``/``user_id``, ``item``/``item_id``)
    seen.npz                                   scipy CSR [n_users, n_items] of every interaction in
                                               the dataset (train, validation and test), never recommended
    top_k.parquet                              user_id, rank (1..K), item_id, score: each user's top-K
                                               unseen items, by the jitted chunked top-k of evaluation
    items.faiss                                with ``--faiss``: an exact inner-product index of the items
    export.json                                the run, its checkpoint, K, dims, the run's options

(``.csv`` instead of ``.parquet`` without pyarrow.) :func:`itemjax.serve.recommend.load_run` on such a
folder answers top-K requests for known users from these files alone, without the raw data or
the model (:class:`itemjax.serve.recommend.ExportedRecommender`).
"""

from __future__ import annotations

import pathlib

import numpy as np
import scipy.sparse

from itemjax.errors import ConfigError, require_extra
from itemjax.serve.recommend import EXPORT_MANIFEST, load_run
from itemjax.runio import atomic_file, write_json_atomic, write_table


def export_run(run_dir, out, *, k: int = 20, faiss: bool = False, data_dir=None, chunk_size: int = 1024,
               progress: bool = False) -> dict:
    """Write the export folder ``out`` of the run in ``run_dir`` (module docstring); return the manifest."""
    from itemjax.evaluation.evaluate import top_k

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"-k must be a positive integer, got {k!r}")
    rec = load_run(run_dir, data_dir=data_dir)
    if getattr(rec.inductive, "holdout_users", None) is not None:
        raise ConfigError("export serves the users a model was trained on; this run is --protocol inductive, whose "
                          "held-out users have no training edges: export a transductive run")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    user_emb, item_emb = (np.asarray(e, np.float32) for e in rec.embeddings("train"))
    split = rec.split
    seen = (split.train + split.valid + split.test).tocsr()
    seen.data[:] = 1
    seen.sum_duplicates()
    items, scores = top_k(user_emb, item_emb, seen, min(int(k), split.n_items), chunk_size=chunk_size,
                          progress=progress)
    n_users, width = items.shape
    keep = items.reshape(-1) >= 0
    users = np.repeat(np.arange(n_users), width)[keep]
    write_table(out / "top_k", {"user_id": split.user_ids[users],
                                "rank": np.tile(np.arange(1, width + 1), n_users)[keep],
                                "item_id": split.item_ids[items.reshape(-1)[keep]],
                                "score": scores.reshape(-1)[keep]})
    for name, array in (("user_embeddings.npy", user_emb), ("item_embeddings.npy", item_emb)):
        with atomic_file(out / name, "wb") as f:
            np.save(f, array)
    write_table(out / "users", {"user": np.arange(split.n_users), "user_id": split.user_ids})
    write_table(out / "items", {"item": np.arange(split.n_items), "item_id": split.item_ids})
    with atomic_file(out / "seen.npz", "wb") as f:
        scipy.sparse.save_npz(f, scipy.sparse.csr_matrix(seen, dtype=np.int8))
    if faiss:
        faiss_module = require_extra("faiss", extra="serve", feature="--faiss")
        index = faiss_module.IndexFlatIP(item_emb.shape[1])
        index.add(np.ascontiguousarray(item_emb))
        faiss_module.write_index(index, str(out / "items.faiss"))
    manifest = {"run": str(pathlib.Path(run_dir)), "checkpoint": rec.checkpoint, "k": int(width),
                "n_users": split.n_users, "n_items": split.n_items, "dim": int(user_emb.shape[1]),
                "dataset": split.name, "faiss": bool(faiss), "config": rec.config.to_dict()}
    write_json_atomic(out / EXPORT_MANIFEST, manifest)
    return manifest
