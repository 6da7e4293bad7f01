"""Data: pinned registry fetch, MovieLens loaders and preprocessing."""
