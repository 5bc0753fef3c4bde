"""The virtual microscope: realistic sessions with ground truth."""
