"""mmrl: MMRL and MMRL++ few-shot adaptation of CLIP, exact to the published method."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("mmrl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    # `import mmrl` stays light: the Classifier (torch, torchvision, PIL) loads on first use
    if name == "Classifier":
        from mmrl.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'mmrl' has no attribute {name!r}")


__all__ = ["Classifier", "__version__"]
