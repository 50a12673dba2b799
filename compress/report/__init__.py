"""Everything a person reads: terminal tables and number formatting (:mod:`.tables`), plots
(:mod:`.plots`, matplotlib), and the bench report's tables and files (:mod:`.bench`). Stages
return data (a ``Result`` with ``to_dict()``); this package turns it into text and pictures."""
from .tables import format_table, human_bytes, human_count, pct, ratio

__all__ = ["format_table", "human_bytes", "human_count", "pct", "ratio"]
