"""CCD: continual collaborative distillation over a stream of blocks (Lee et al., KDD 2024)."""
