"""What a step minimises: negative samplers, BPR/BCE/softmax, ITEM and NeuralNDCG, the objective factory."""
