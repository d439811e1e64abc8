"""The report's look, shared by its charts and its page: the colours of this run, the reference and
the earlier runs, and the resolution figures are drawn and saved at."""

from __future__ import annotations

POLICY_COLOR = "#1f77b4"
REFERENCE_COLOR = "#7f7f7f"
RUN_COLOR = "#9ecae1"
LENGTH_CONTROLLED_COLOR = "#d62728"
DPI = 110
