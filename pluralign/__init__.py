"""pluralign: pluralistic / personalized reward modelling on frozen embeddings."""


def __getattr__(name):
    # Lazy, so `import pluralign` stays light (no JAX/orbax import until a model is loaded).
    if name == "load":
        from pluralign.export.artifact import load

        return load
    raise AttributeError(f"module 'pluralign' has no attribute {name!r}")
