"""The user-item graph: CSR structure, normalised propagation kernels, personalised PageRank."""
