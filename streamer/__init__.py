"""The microscope-side daemon: watch, gate, ledger, send (no torch)."""
