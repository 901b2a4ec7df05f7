"""The one exception type for errors a user can cause and fix."""


class VitsamError(Exception):
    """A user-facing error: its message says what went wrong and what to do.

    The CLI prints it as one line on stderr and exits non-zero, never a traceback.
    """
