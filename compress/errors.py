"""Errors that mean "the user gave us something wrong": the CLI prints one line and exits 2."""


class UserError(Exception):
    """Bad input: missing or corrupt file, unknown name, out-of-range option. Message is one line."""

    exit_code = 2


class ArtifactError(UserError):
    """A file that is not a readable model artifact."""
