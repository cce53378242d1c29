"""Static benchmark datasets read straight from Parquet (not streamed through the lake)."""
