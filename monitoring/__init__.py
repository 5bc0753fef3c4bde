"""Snapshots, metrics, class quality and status pages (no torch: consumes numpy snapshots)."""
