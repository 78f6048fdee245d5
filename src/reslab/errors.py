"""What a user can get wrong, as exception types: the ``reslab`` command prints one line for these.

    uv run reslab train cifar10/resnet20 --set train.iteratoins=5   # ConfigError: one line, exit 2

Every error a user can cause and fix (a bad config value, a missing or corrupt file, weights of
another layout, a run folder in use) is a :class:`ReslabError`; its message names the thing and
the fix. Anything else is a bug of reslab's and keeps its traceback. The subclasses also derive
from the built-in type a Python caller would expect (``ValueError``, ``FileNotFoundError``, ...),
so ``except ValueError`` keeps working around library calls.
"""

from __future__ import annotations


class ReslabError(Exception):
    """A mistake in what reslab was given; the message says what and how to fix it."""


class ConfigError(ReslabError, ValueError):
    """A bad config: the message names the key, the bad value and the valid choices."""


class ModelError(ReslabError, ValueError):
    """An unknown model name or an option the model does not have."""


class MissingFileError(ReslabError, FileNotFoundError):
    """A file or folder reslab was pointed at does not exist (data, weights, config, run)."""


class DataError(ReslabError, ValueError):
    """Data that exists but cannot be used: a corrupt file, a bad annotation, an empty class."""


class WeightsError(ReslabError, ValueError):
    """A weights file that is unreadable, or that holds another network than the one asked for."""


class CheckpointError(ReslabError, RuntimeError):
    """A checkpoint that cannot be loaded safely (corrupt, or not a plain-data checkpoint)."""


class RunError(ReslabError, RuntimeError):
    """A run directory that cannot be used as asked: in use by another process, holding another
    config, or a run that diverged."""


class DivergedError(RunError):
    """Training produced a non-finite loss or non-finite weights; nothing bad was saved."""


class MissingExtraError(ReslabError, ImportError):
    """An optional feature whose packages are not installed; the message names the extra."""


def require_extra(module: str, extra: str, purpose: str):
    """``import module``, or :class:`MissingExtraError` saying which extra of reslab provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs the {extra!r} extra ({module} is not installed): "
            f"pip install 'reslab[{extra}]' (in a checkout: uv sync --all-extras)"
        ) from None
