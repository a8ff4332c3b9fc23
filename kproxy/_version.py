__version__ = "0.1.0"
# The kamal-proxy release whose commands, flags and behaviour kproxy follows.
KAMAL_PROXY_COMPAT = "0.9"


def version_line() -> str:
    """What ``version`` prints: this program's version (the CLI) or the proxy's (its answer)."""
    return f"kproxy {__version__} (kamal-proxy {KAMAL_PROXY_COMPAT} compatible)"
