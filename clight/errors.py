"""Errors clight raises for bad user input.

Every error names the argument or file, what was expected, what was found and a way out. The CLI prints them
as one line (no traceback) and exits with status 2.
"""

from __future__ import annotations


class ClightConfigError(ValueError):
    """Raised for bad user input: a config value, a data file, a model folder, a resume mismatch."""
