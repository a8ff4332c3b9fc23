"""Install wrk, nginx, HAProxy, Caddy and valgrind from Debian's packages, with the servers'
system services kept off.

Debian's postinst scripts start each server as a system service (nginx and Caddy on port 80).
The benchmark starts its own instances on free loopback ports, so the system services must
never run: a ``policy-rc.d`` that exits 101 stops invoke-rc.d and deb-systemd-invoke from
starting them during the install (see /usr/share/doc/init-system-helpers/README.policy-rc.d),
and afterwards each one is stopped (if it started anyway) and disabled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

#: binary → Debian package (checked with ``apt-cache policy`` on bookworm)
PACKAGES: Final = {
    "wrk": "wrk",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "caddy": "caddy",
    "valgrind": "valgrind",  # callgrind counts instructions (the instructions and scale parts)
}
SERVICES: Final = ("nginx", "haproxy", "caddy")
POLICY_RC_D: Final = Path("/usr/sbin/policy-rc.d")
POLICY_DENY_ALL: Final = (
    "#!/bin/sh\n# kproxy benchmarks: start no service during the install\nexit 101\n"
)
#: Debian installs its servers in /usr/sbin, which a non-root PATH may lack.
SEARCH_PATH: Final = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)


def which(binary: str) -> str | None:
    return shutil.which(binary, path=SEARCH_PATH)


def missing_binaries() -> list[str]:
    return [binary for binary in PACKAGES if which(binary) is None]


def ensure_installed() -> None:
    """Install whatever is missing; leave no system service of these running or enabled."""
    missing = missing_binaries()
    if missing:
        if os.geteuid() != 0 or which("apt-get") is None:
            sys.exit(
                f"benchmarks: missing {', '.join(missing)}; install the Debian packages "
                f"{' '.join(PACKAGES[b] for b in missing)} (as root this runner does it)"
            )
        print(f"installing {', '.join(PACKAGES[b] for b in missing)} with apt-get", flush=True)
        _apt_install([PACKAGES[b] for b in missing])
    quiet_system_services()
    still = missing_binaries()
    if still:
        sys.exit(f"benchmarks: still missing after the install: {', '.join(still)}")


def _apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    saved = POLICY_RC_D.read_bytes() if POLICY_RC_D.exists() else None
    POLICY_RC_D.write_text(POLICY_DENY_ALL)
    POLICY_RC_D.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if saved is None:
            POLICY_RC_D.unlink(missing_ok=True)
        else:
            POLICY_RC_D.write_bytes(saved)
            POLICY_RC_D.chmod(0o755)


def quiet_system_services() -> None:
    """Stop and disable the packaged services, so that no system nginx, HAProxy or Caddy
    holds port 80 (or any other) now or after a reboot. Our own instances are untouched:
    they have their own pid files and configs in a temp dir."""
    if os.geteuid() != 0:
        return
    for service in SERVICES:
        if not _service_installed(service):
            continue
        if _run_quietly(["service", service, "status"]) == 0:
            print(f"stopping the system {service} service", flush=True)
            _run_quietly(["service", service, "stop"])
        if which("systemctl") is not None:
            _run_quietly(["systemctl", "disable", service])
        if Path(f"/etc/init.d/{service}").exists():
            _run_quietly(["update-rc.d", service, "disable"])


def _service_installed(service: str) -> bool:
    return (
        Path(f"/etc/init.d/{service}").exists()
        or Path(f"/lib/systemd/system/{service}.service").exists()
    )


def _run_quietly(argv: list[str]) -> int:
    if which(argv[0]) is None:
        return 127
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=60
    )
    return done.returncode


def versions() -> dict[str, str]:
    """The version line of each server and of wrk, as the binaries report them."""
    commands = {
        "nginx": ["nginx", "-v"],
        "haproxy": ["haproxy", "-v"],
        "caddy": ["caddy", "version"],
        "wrk": ["wrk", "-v"],
        "valgrind": ["valgrind", "--version"],
    }
    found: dict[str, str] = {}
    for name, argv in commands.items():
        path = which(argv[0])
        if path is None:
            found[name] = "not installed"
            continue
        done = subprocess.run(
            [path, *argv[1:]], capture_output=True, text=True, check=False, timeout=30
        )
        text = (done.stdout + done.stderr).strip()
        match = re.search(r"\d+\.\d+(\.\d+)?\S*", text)
        found[name] = match.group(0) if match else text.splitlines()[0] if text else "?"
    return found
