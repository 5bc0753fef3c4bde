"""``otf2d demo``: the virtual microscope, a streamer and an engine as child processes (no torch here)."""
