"""The one error type for user mistakes.

Everything a user can get wrong (a spec key, a storage URL, a data path, a study name) raises
:class:`HpoError` with a message that names what is wrong and how to fix it. The CLI turns it into
one line on stderr and exit code 2; library callers can catch it like any exception.
"""

from __future__ import annotations


class HpoError(Exception):
    """A mistake in the user's input, explained in one line."""


class WorkerError(HpoError):
    """A worker process died (killed, out of memory): said in one line, the study kept as it is."""
