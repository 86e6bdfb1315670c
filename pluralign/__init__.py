"""pluralign: pluralistic / personalized reward modelling on frozen embeddings."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("pluralign")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0.1.0+unknown"


def __getattr__(name):
    # Lazy, so `import pluralign` stays light (no JAX/orbax import until a model is loaded).
    if name == "load":
        from pluralign.export.artifact import load

        return load
    raise AttributeError(f"module 'pluralign' has no attribute {name!r}")
