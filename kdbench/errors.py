"""The one exception type for mistakes a user can fix."""


class KdbenchError(Exception):
    """A user-fixable error: bad input, a missing file, an unknown name.

    The CLI prints its message as one line and exits with code 2. Messages name the
    file, the key and what was expected, so that no traceback is needed.
    """
