"""The exceptions reglab raises for bad input: each is one line for a person, exit 2.

Kept apart from every checking module so that data readers, models and commands can
raise them without importing each other (or torch).
"""

from __future__ import annotations


class ReglabError(ValueError):
    """A problem with the user's input, reported as one line without a traceback."""


class ConfigError(ReglabError):
    """A config value that cannot work."""


class DataError(ReglabError):
    """Data that cannot be used: empty, non-finite, or too small to split."""
