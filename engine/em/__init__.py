"""Pure tensor math of 2D classification: no I/O, device and dtype from the inputs."""
