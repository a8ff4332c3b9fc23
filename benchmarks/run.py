"""Run kproxy's benchmark from the repo root: ``python benchmarks/run.py --help``."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's folder is on sys.path rather than the repo root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.cli import main

    main()
