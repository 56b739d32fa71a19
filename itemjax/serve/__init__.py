"""Trained runs as recommenders: loading, top-K for users, export of embeddings and lists."""
