"""The one error of the ``.dcz`` package.

Every refusal (a malformed code table, a short or corrupt stream, a file that is not a ``.dcz``
or fails a checksum, an argument out of range) raises :class:`DczError`, a ``ValueError`` whose
message is one sentence on one line. Anything else escaping ``dcz`` is a bug in ``dcz``.
"""


class DczError(ValueError):
    """Bad input to the ``.dcz`` codec or container. Message is one line."""
