"""The offline ``otf2d classify`` command on a finished particles.star / .cs."""
