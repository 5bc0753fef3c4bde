"""The torch-free client of a running engine and its commands (status, snapshot, override)."""
