"""otf2d core: the vocabulary shared by every component (no torch, no sockets)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("otf2d")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "uninstalled"

__all__ = ["__version__"]
