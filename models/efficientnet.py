"""Placeholder: being written (foundation issue)."""
