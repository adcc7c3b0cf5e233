"""marrow-edge: a bone-marrow differential count at the microscope."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("marrow-edge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
