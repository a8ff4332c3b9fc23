"""``python -m kproxy``: the same as the ``kproxy`` command."""

from kproxy.cli import main

if __name__ == "__main__":
    main()
