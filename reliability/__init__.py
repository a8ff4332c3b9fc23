"""kproxy's reliability campaign (issue 14): fault and load scenarios run against the real
program, black box. ``python -m reliability --help``; see reliability/README.md."""
