"""Print top-K recommendations from a trained run, for a known user or a new one.

    python experiments/recommend.py RUN_DIR --user 196            # a user of the dataset (original id)
    python experiments/recommend.py RUN_DIR --items 50,172,181    # a new user who liked these items
    python experiments/recommend.py RUN_DIR --list-items          # the valid item ids (and titles)

Ids are the dataset's original ids (MovieLens: the numbers in u.data / ratings.dat). A new user
is embedded by message passing from its items with no gradient step (its own ID embedding is
zero); the given items, or a known user's training items, are never recommended.
"""

from __future__ import annotations

import sys

from itemjax.cli import ArgumentParser, run_main


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by experiments/train.py")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="original id of a user of the dataset")
    who.add_argument("--items", metavar="ID,ID,...", help="original item ids of a new user, comma-separated")
    who.add_argument("--list-users", action="store_true", help="print the valid user ids and exit")
    who.add_argument("--list-items", action="store_true", help="print the valid item ids (with titles) and exit")
    p.add_argument("-k", type=int, default=10, help="number of items to recommend (default 10)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                   help="checkpoint slot (default: best, else latest)")
    p.add_argument("--data-dir", default=None, help="data root (default: the run's, else $ITEMJAX_DATA)")
    return p


def format_rows(rows) -> list[str]:
    """``" 1. 50  Star Wars (1977)  (score 4.1234)"`` lines from ``(item_id, score, title)`` rows."""
    width = max((len(str(item_id)) for item_id, _, _ in rows), default=1)
    return [f"{rank:>2}. {str(item_id):>{width}}  {title or '(no title)'}  (score {score:.4f})"
            for rank, (item_id, score, title) in enumerate(rows, start=1)]


def main(argv=None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.k < 1:
        cli.error(f"-k must be >= 1 (got {args.k})")
    from itemjax.serve.recommend import load_run

    recommender = load_run(args.run_dir, data_dir=args.data_dir, checkpoint=args.checkpoint)
    if args.list_users:
        print("\n".join(str(user_id) for user_id in recommender.user_ids.tolist()))
        return 0
    if args.list_items:
        titles = recommender.titles or {}
        print("\n".join(f"{item_id}\t{titles.get(dense, '')}".rstrip()
                        for dense, item_id in enumerate(recommender.item_ids.tolist())))
        return 0
    if args.user is not None:
        rows = recommender.for_user(args.user, k=args.k)
        header = f"top-{args.k} for user {args.user}"
    else:
        item_ids = [part.strip() for part in args.items.split(",") if part.strip()]
        items = recommender.dense_items(item_ids)
        titles = recommender.titles or {}
        given = "; ".join(f"{recommender.item_ids[dense]} {titles.get(int(dense), '')}".strip() for dense in items)
        rows = recommender.for_new_user(item_ids, k=args.k)
        header = f"top-{args.k} for a new user who liked: {given}"
    print(f"{header}\n({recommender.describe()})")
    print("\n".join(format_rows(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
