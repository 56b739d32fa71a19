"""Embedding models (MF, LightGCN, NGCF, SAGE, GAT) over the propagated graph."""
