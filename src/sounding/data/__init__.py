"""Data: sources, preparation with a verified manifest, and in-memory batches for training."""
