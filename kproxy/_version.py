__version__ = "0.1.0"
# The kamal-proxy release whose commands, flags and behaviour kproxy follows.
KAMAL_PROXY_COMPAT = "0.9"
