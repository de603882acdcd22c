"""The installed version of presence."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("presence")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
