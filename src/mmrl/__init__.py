"""mmrl: MMRL and MMRL++ few-shot adaptation of CLIP, exact to the published method."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("mmrl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
