"""Launchers: absl-flags entry points, one per experiment.

Shipped in recrl's wheel as the top-level package ``experiments`` (run one with
``python -m experiments.prorl --config=prorl.py:demo`` from any directory); each needs its
pipeline's extra (``recrl[prorl]``, ``recrl[goracs]``, ``recrl[rlvr]``).
"""
