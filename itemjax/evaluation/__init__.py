"""Full-ranking metrics, the chunked evaluator, the inductive protocol, learning-curve plots."""
