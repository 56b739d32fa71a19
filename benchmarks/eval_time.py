"""Time full-ranking evaluation on a random Gowalla-sized case and print the result.

Gowalla (LightGCN split): 29858 users, 40981 items, 810128 training and 217242 test
interactions; embeddings of dimension 64. Random embeddings and interactions of that size
are enough to time the evaluator (its cost does not depend on the values).

    python benchmarks/eval_time.py [--chunk-size 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from itemjax.evaluation.evaluate import evaluate

N_USERS, N_ITEMS, DIM = 29858, 40981, 64
N_TRAIN, N_TEST = 810128, 217242


def random_interactions(rng: np.random.Generator, n_entries: int) -> sp.csr_array:
    """About ``n_entries`` random (user, item) pairs as a CSR [N_USERS, N_ITEMS] (duplicates merged)."""
    users = rng.integers(0, N_USERS, n_entries)
    items = rng.integers(0, N_ITEMS, n_entries)
    matrix = sp.csr_array((np.ones(n_entries, np.float32), (users, items)), shape=(N_USERS, N_ITEMS))
    matrix.sum_duplicates()
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    user_emb = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    item_emb = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    train = random_interactions(rng, N_TRAIN)
    test = random_interactions(rng, N_TEST)
    test = test - test.multiply(train)  # held-out items are not training items
    test.eliminate_zeros()

    start = time.perf_counter()
    evaluate(user_emb, item_emb, train, test, ks=(20,), chunk_size=args.chunk_size)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate(user_emb, item_emb, train, test, ks=(20,), chunk_size=args.chunk_size)
        times.append(time.perf_counter() - start)
    print(
        f"gowalla-sized evaluation ({N_USERS} users x {N_ITEMS} items, dim {DIM}, "
        f"{train.nnz} excluded, {test.nnz} targets, {result['n_users']} test users, "
        f"chunk {args.chunk_size}): first call (with compile) {first:.2f} s, "
        f"then {min(times):.2f} s (best of {args.repeats}, median {np.median(times):.2f} s)"
    )


if __name__ == "__main__":
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    main()
