"""Process resources: the particle heap budget and memory readings."""
