"""The one error convention of the package: bad input raises ConfigError with a message that names
the argument or the file; the commands print that message on stderr and exit with status 2, and
keep tracebacks for bugs."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Bad input (an argument, a file, a run folder); its message says which and what to do."""
