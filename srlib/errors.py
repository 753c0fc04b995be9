"""Exceptions that say what went wrong and how to fix it; the CLI prints them as one line."""

# `srlib train` / `srlib sweep` exit code when a run stopped cleanly at its deadline (resumable), distinct from
# failure (2) and success (0).
PARTIAL_EXIT_CODE = 3


class SrlibError(Exception):
    """Base class: the message names the problem and the fix."""

    def __str__(self) -> str:
        # Messages often quote another library's exception, which may span lines; the CLI promises one.
        return " ".join(super().__str__().split())


class DataError(SrlibError):
    pass


class WeightsError(SrlibError):
    pass


class ConfigError(SrlibError):
    pass


class TrainingError(SrlibError):
    pass


class CacheError(SrlibError):
    pass


class LockError(SrlibError):
    pass


class DiskFullError(SrlibError):
    pass
