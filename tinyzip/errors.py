"""One exception hierarchy for the whole project.

Library code raises these with the offending value in the message; only
``tinyzip/cli.py`` catches them, prints one line and exits with ``exit_code``.
"""

from __future__ import annotations


class TinyzipError(Exception):
    """Base class of every error tinyzip reports to a user."""

    exit_code = 1


class CorruptInputError(TinyzipError):
    """An archive is truncated, damaged, or not a tinyzip archive at all."""


class WrongModelError(TinyzipError):
    """An archive was made with another model than the one available."""


class CheckpointError(TinyzipError):
    """A .tzm checkpoint cannot be read or is not valid."""


class UsageError(TinyzipError):
    """The caller asked for something impossible (bad flag, bad argument)."""
