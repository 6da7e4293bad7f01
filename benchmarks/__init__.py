"""Benchmarks: timing and quality comparisons, each printing ratios against a named reference."""
