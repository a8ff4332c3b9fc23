"""CPU time and memory of a process tree, read from /proc (Linux only).

A multi-process server (nginx's master and workers, ``kproxy run --workers N``) is measured as
the whole tree below the pid we started. Threads are already summed in /proc/<pid>/stat, and
children that exited are counted through their parent's ``cutime``/``cstime`` (proc(5)).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")  # ticks per second


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))  # fields[1] is ppid
    found = [root]
    for pid in found:
        found.extend(children.get(pid, ()))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of the tree, including its reaped children, in seconds."""
    ticks = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of proc(5), 11-14 here.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(root: int) -> dict[str, float]:
    """Resident memory of the tree in MiB: ``rss`` (VmRSS summed over the processes, which
    counts shared pages once per process), ``pss`` (shared pages divided among the sharers) and
    ``processes``."""
    pids = tree(root)
    return {
        "rss_mib": sum(_status_kib(pid, "VmRSS") for pid in pids) / 1024,
        "pss_mib": sum(_pss_kib(pid) for pid in pids) / 1024,
        "processes": len(pids),
    }
