"""The one error contract of the toolkit.

The library raises :class:`UserError` (a ``ValueError``) with a one-line sentence whenever the
input is at fault: a missing or corrupt file, an unknown name, an out-of-range option. The CLI
prints that sentence and exits with code 2; library callers catch ``ValueError`` as usual.
Anything else escaping a stage is a bug in this toolkit.
"""


class UserError(ValueError):
    """Bad input: missing or corrupt file, unknown name, out-of-range option. Message is one line."""

    exit_code = 2


class ArtifactError(UserError):
    """A file that is not a readable model artifact."""
