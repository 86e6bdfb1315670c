"""The errors pluralign raises for what its caller gave it, so that a server (or any caller)
can tell a bad request from a fault of its own with one `except`.

`InputError` is a bad argument to a trained model's reward: a wrong shape, a NaN, a label
outside [0, 1], an unknown user. Its message is one line naming the argument and the problem
(a server answers it with a 4xx). `ArtifactError` is a model directory that cannot be loaded
(a truncated or corrupt file, named): the deployment's fault, not the request's.
Imported data's `pluralign.data.format.DatasetError` (file, row, problem) is an InputError too.
"""

from __future__ import annotations


class InputError(ValueError):
    """An argument the model cannot use; ``str(e)`` is one line: ``"<argument>: <problem>"``."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (texts where numbers were expected, a dict for a Support, ...)."""


class UnknownUserError(InputError, KeyError):
    """A user the model has no state for (not a user id of its dataset, or held out of training).
    Also a KeyError, as unknown users always were."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a key
        return str(self.args[0]) if self.args else ""


class ArtifactError(ValueError, RuntimeError):
    """A model artifact that cannot be loaded; ``str(e)`` names the file and the problem in one line.
    A ValueError and a RuntimeError, as `load` raised before (a bad model.json / a state mismatch)."""
