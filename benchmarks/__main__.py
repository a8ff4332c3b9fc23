"""``python -m benchmarks`` is ``python benchmarks/run.py``."""

from benchmarks.cli import main

main()
