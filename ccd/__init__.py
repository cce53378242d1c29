"""ccd: keep a compact recommender fresh on a stream of interaction blocks."""

__version__ = "0.1.0"
