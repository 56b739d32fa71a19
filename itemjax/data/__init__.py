"""Interactions in, splits out: loaders, downloads, train/valid/test splits, side features."""
