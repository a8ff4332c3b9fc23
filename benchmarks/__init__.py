"""kproxy's benchmark: kproxy beside nginx, HAProxy and Caddy on one machine, in one run.

Not part of the test suite and not installed with the package. Run it from the repo root with
``python benchmarks/run.py`` (README.md beside this file says what it measures).
"""
