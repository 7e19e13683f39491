"""`python -m pssim`: the same command as `pssim` (pssim/cli.py)."""

from pssim.cli import main

if __name__ == "__main__":
    main()
