"""Durable engine state on disk: the session journal, its segments, checkpoints."""
