"""Post-hoc analysis of pssim run directories: figures and tables from the files runs leave behind.

Everything here reads run directories (summary.json, config.yaml, steps/evals/links.parquet) and
nothing else: it never imports the simulator, so old runs stay analysable whatever happens to pssim.

    python -m analysis COMMAND PATHS... [--hue KEY...] [--where KEY=VALUE...] [--out DIR]

Commands: scaling, efficiency, convergence, time-to-target, staleness, breakdown, links, table, all
(docs/ANALYSIS.md). From Python: load_runs (the tidy table, one row per run, every config key a dotted
column), varying_keys, assign_lines, and the tables in analysis.tables.
"""

from analysis.groups import assign_lines, varying_keys
from analysis.load import load_evals, load_links, load_runs, load_steps

__all__ = ["assign_lines", "load_evals", "load_links", "load_runs", "load_steps", "varying_keys"]
