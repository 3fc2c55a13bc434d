"""The one base of every error bertml reports to a user: the CLI prints it as one line
(`error: <message>`) and exits 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class BertmlError(Exception):
    """A user-facing error: bad config, input, checkpoint, output folder, cluster path."""
