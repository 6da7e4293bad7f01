"""Launchers: absl-flags entry points, one per experiment."""
