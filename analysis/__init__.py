"""Post-hoc analysis of pssim run directories.

Everything here reads the files a run leaves behind (summary.json, evals.parquet) and nothing else:
it never imports the simulator, so old runs stay analysable whatever happens to pssim's code.

    python -m analysis.scaling runs/multirun/DATE/TIME [--out DIR] [--format png|svg]
"""

from analysis.load import load_evals, load_runs

__all__ = ["load_evals", "load_runs"]
