"""The project's own error types. A stage prints one of these as a single `error:` line (its
message names the problem and the fix); any other exception is a defect and keeps its traceback.

They derive from the builtin a caller would expect too (ValueError, RuntimeError), so
`except ValueError` around library calls keeps working.
"""
import signal


class MpqError(Exception):
    """Base of every error whose message is meant for the user."""


class InputError(MpqError, ValueError):
    """Something the user gave (config, checkpoint, pickle, policy, data folder) cannot be used."""


class ConfigError(InputError):
    """A config that does not match the schema; the message is one line naming the key."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MachineError(MpqError, RuntimeError):
    """This machine cannot do what was asked (no CUDA, no solver, a search too large for it)."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT during training (mpq.train.resume's handler raises it); a BaseException so a
    generic `except Exception` cannot swallow it. The stage exits with 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
