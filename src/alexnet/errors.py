"""Every error a user can cause and fix, in one place that every other module imports.

The command line turns these (and ValueError, for a bad value, and OSError, for a missing file) into
one line naming the file or value and the fix, with a non-zero exit status; anything else is a bug in
the project and keeps its traceback.
"""

from __future__ import annotations


class AlexNetError(Exception):
    """Base of the user-facing errors below; the message names what was wrong and what to do."""


class DataError(AlexNetError, RuntimeError):
    """A problem with the input data or the output folder; the message names the path and the fix."""


class BadImage(AlexNetError, ValueError):
    """An input file that cannot become an image; the message is the reason reported for it."""


class CheckpointError(AlexNetError, RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt, of unknown format, or carrying code."""


class DeviceError(AlexNetError, RuntimeError):
    """A device that does not exist on this machine (``--set run.device=cuda`` without a GPU)."""


class NonFiniteLossError(AlexNetError, FloatingPointError):
    """The loss became NaN or infinite; the step it happened at is in the message and ``.step``."""

    def __init__(self, step: int, epoch: int, batch: int, loss: float):
        super().__init__(
            f"non-finite loss ({loss}) at step {step} (epoch {epoch + 1}, batch {batch}); the run stopped "
            "before writing another checkpoint, so the last one predates it. Lower optim.lr, check the input "
            "scale (data.input_scale) or use another model.init"
        )
        self.step = step


class MissingExtra(AlexNetError, ImportError):
    """An optional package a command needs is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str, what: str):
        super().__init__(f"{what} needs the {package} package, which is not installed: "
                         f"pip install 'alexnet[{extra}]' (nothing was written)")
        self.package, self.extra = package, extra


def require(module: str, extra: str, what: str):
    """Import optional `module` or raise MissingExtra naming `extra`; returns the module."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(module, extra, what) from None


USER_ERRORS = (AlexNetError, ValueError, OSError)
