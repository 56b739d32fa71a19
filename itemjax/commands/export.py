"""Export a finished run for serving: embeddings with original ids and every user's top-K.

    itemjax export runs/my-run --out exported/ -k 50 [--faiss]

Writes ``user_embeddings.npy``, ``item_embeddings.npy``, ``users.parquet``, ``items.parquet``,
``seen.npz``, ``top_k.parquet`` (``user_id, rank, item_id, score``: each user's top-K items it
has not interacted with), optionally ``items.faiss``, and ``export.json`` (:mod:`itemjax.serve.export`).
``itemjax recommend DIR --user ID`` then answers from the folder without the raw data.
"""

from __future__ import annotations

import sys

from itemjax.cli import ArgumentParser, run_main


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory written by itemjax train")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("-k", type=int, default=20, help="items per user in top_k.parquet (default 20)")
    p.add_argument("--faiss", action="store_true",
                   help="also write an exact inner-product faiss index of the items (the serve extra)")
    p.add_argument("--data-dir", default=None, help="data root, overriding the run's")
    p.add_argument("--chunk", type=int, default=1024, help="users scored at once (default 1024)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from itemjax.serve.export import export_run

    manifest = export_run(args.run, args.out, k=args.k, faiss=args.faiss, data_dir=args.data_dir,
                          chunk_size=args.chunk, progress=not args.no_progress)
    print(f"exported {manifest['n_users']} users x top-{manifest['k']} of {manifest['n_items']} items "
          f"({manifest['checkpoint']} checkpoint of {manifest['run']}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
