"""`python -m microweave.cli`: the same command where the console script is not on PATH."""

from . import main

main()
