"""Compression side of the toolkit: every stage is a library function first, a CLI command second."""
__version__ = "0.1.0"
