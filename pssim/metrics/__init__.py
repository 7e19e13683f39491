"""Metrics: the run's tidy tables, its summary and its Chrome trace."""

from pssim.metrics.summary import format_summary, summarize
from pssim.metrics.tables import evals_frame, links_frame, steps_frame
from pssim.metrics.trace import chrome_trace

__all__ = ["chrome_trace", "evals_frame", "format_summary", "links_frame", "steps_frame", "summarize"]
