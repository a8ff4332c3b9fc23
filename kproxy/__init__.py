"""kproxy: an HTTP reverse proxy for zero-downtime deploys, on trio and h11.

Embedding::

    proxy = await nursery.start(Proxy(RunOptions(socket_path="", state_dir="", http_port=0)).serve)
    await proxy.deploy("web", DeploymentOptions(targets=("127.0.0.1:3000",)))

The control protocol is specified in protocol.md.
"""

from typing import TYPE_CHECKING, Any

from kproxy._version import __version__
from kproxy.core.command_parser import parse_command
from kproxy.core.commands import Command
from kproxy.core.listing import ServiceInfo
from kproxy.core.options import DeploymentOptions, RunOptions, ServiceOptions, TargetOptions
from kproxy.errors import (
    CommandError,
    DeployError,
    DeployTimeout,
    KProxyError,
    ServiceNotFound,
    UsageError,
)

if TYPE_CHECKING:
    from kproxy.runtime.log import Logger
    from kproxy.runtime.proxy import Proxy


def __getattr__(name: str) -> Any:
    # The trio runtime loads on first use, so `import kproxy.core.x` stays free of I/O modules.
    if name == "Proxy":
        from kproxy.runtime.proxy import Proxy

        return Proxy
    if name == "Logger":
        from kproxy.runtime.log import Logger

        return Logger
    raise AttributeError(f"module 'kproxy' has no attribute {name!r}")


__all__ = [
    "Command",
    "CommandError",
    "DeployError",
    "DeployTimeout",
    "DeploymentOptions",
    "KProxyError",
    "Logger",
    "Proxy",
    "RunOptions",
    "ServiceInfo",
    "ServiceNotFound",
    "ServiceOptions",
    "TargetOptions",
    "UsageError",
    "__version__",
    "parse_command",
]
