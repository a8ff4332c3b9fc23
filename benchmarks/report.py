"""Machine facts, the results tables (markdown), issue 15's targets, and the saved files."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Final

from benchmarks import https, install, instructions_inprocess, scale, servers
from benchmarks.compare import CASES, Row

MB: Final = 1_000_000 / (1024 * 1024)  # MiB → MB
MEMORY_TARGET_MB: Final = 150.0
# The reference of every "vs ref" ratio and target: Caddy without its access log, which ran
# within ±10 % of kamal-proxy (logging every request) on this machine (issue 15).
REFERENCE: Final = "caddy-nolog"


def _first_line_with(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError:
        pass
    return "?"


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=servers.REPO, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_facts() -> dict[str, Any]:
    meminfo = _first_line_with("/proc/meminfo", "MemTotal")
    memory_gib = int(meminfo.split()[0]) / 1024 / 1024 if meminfo != "?" else 0.0
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "kproxy"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _first_line_with("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "kproxy": _version("kproxy"),
        "kproxy_commit": commit + ("+modified" if dirty else ""),
        "trio": _version("trio"),
        "h11": _version("h11"),
        **install.versions(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _ratio(value: float, reference: float | None) -> str:
    if not reference or not value:
        return "—"
    return f"{value / reference:.2f}"


def comparison_tables(rows: list[Row]) -> str:
    parts: list[str] = []
    header = (
        "| server | req/s | vs direct | vs ref | p50 ms | vs direct | vs ref"
        " | p99 ms | vs direct | vs ref | CPU µs/req | vs direct | vs ref | errors |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    )
    for case in CASES:
        mine = {row.server: row for row in rows if row.case == case.name}
        if not mine:
            continue
        direct, caddy = mine.get("direct"), mine.get(REFERENCE) or mine.get("caddy")
        lines = [f"**{case.name}**", "", header]
        for row in mine.values():
            spread = f" ({row.rps_min:.0f}-{row.rps_max:.0f})" if row.rps_max > row.rps_min else ""
            cells = [
                row.label,
                f"{row.rps:.0f}{spread}",
                _ratio(row.rps, direct.rps if direct else None),
                _ratio(row.rps, caddy.rps if caddy else None),
                f"{row.p50_ms:.2f}",
                _ratio(row.p50_ms, direct.p50_ms if direct else None),
                _ratio(row.p50_ms, caddy.p50_ms if caddy else None),
                f"{row.p99_ms:.2f}",
                _ratio(row.p99_ms, direct.p99_ms if direct else None),
                _ratio(row.p99_ms, caddy.p99_ms if caddy else None),
                f"{row.cpu_us:.1f}",
                _ratio(row.cpu_us, direct.cpu_us if direct else None),
                _ratio(row.cpu_us, caddy.cpu_us if caddy else None),
                str(row.errors),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def https_section(section: dict[str, Any]) -> str:
    """The HTTPS cases: per server, keep-alive req/s and new handshakes/s, with ratios to Caddy."""
    rows = [Row(**row) for row in section["summary"]]
    found = {(row.case, row.server): row for row in rows}
    lines = [
        "| server | keep-alive req/s | vs Caddy | p50 ms | p99 ms | CPU µs/req | vs Caddy"
        " | new handshakes/s | vs Caddy | p50 ms | p99 ms | CPU µs/handshake | vs Caddy"
        " | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for server in dict.fromkeys(row.server for row in rows):
        cells = [next(row.label for row in rows if row.server == server)]
        errors = 0
        for case in https.CASES:
            row, caddy = found.get((case.name, server)), found.get((case.name, "caddy"))
            if row is None:
                cells += ["—"] * 6
                continue
            spread = f" ({row.rps_min:.0f}-{row.rps_max:.0f})" if row.rps_max > row.rps_min else ""
            cells += [
                f"{row.rps:.0f}{spread}",
                _ratio(row.rps, caddy.rps if caddy else None),
                f"{row.p50_ms:.2f}",
                f"{row.p99_ms:.2f}",
                f"{row.cpu_us:.0f}",
                _ratio(row.cpu_us, caddy.cpu_us if caddy else None),
            ]
            errors += row.errors
        lines.append("| " + " | ".join([*cells, str(errors)]) + " |")
    label = {row.server: row.label for row in rows}
    negotiated = "; ".join(
        f"{label[server]}: {', '.join(section['negotiated'][server])}"
        for server in label
        if server in section["negotiated"]
    )
    resumed = sum(section["resumed"].values())
    foreign = max(row.foreign_cpu_max for row in rows)
    lines += [
        "",
        f"- Certificate: {section['certificate']}, for `{section['host']}` (SNI and Host);"
        " each server's was checked once against the CA and the name before measuring.",
        "- Keep-alive: wrk on `https://…/tiny`, 16 connections, one handshake each, then"
        " requests on it. New handshakes: `benchmarks/handshakes.py`, 16 threads, each"
        " request on a new connection with a full handshake (no session offered again;"
        f" {resumed} resumed), `Connection: close`, read to the end.",
        f"- Negotiated (new handshakes): {negotiated}.",
        f"- Other processes used up to {foreign:.0%} of the machine's CPU during an HTTPS"
        " measurement (in the handshake case part of that may be the kernel's work on the"
        " connections, which no process is charged for).",
    ]
    return "\n".join(lines)


def _named(label: str, text: str) -> str:
    """Name the kproxy a target is about once its worker count was chosen (``--kproxy-workers``)."""
    return text if label == "kproxy" else f"{label}: {text}"


def _kproxy_mode(settings: dict[str, Any]) -> str:
    """Which kproxy was measured: ``--kproxy-workers``, or kproxy's default."""
    default = f"one worker per core: {settings['kproxy_default_workers']} here"
    chosen = settings["kproxy_workers"]
    if chosen is None:
        return f"`kproxy run` at its default ({default})"
    if len(chosen) == 1:
        return f"`kproxy run --workers {chosen[0]}` (its default is {default})"
    runs = " and ".join(f"`--workers {n}`" for n in chosen)
    first = "; cutover and memory with the first"
    if not {"cutover", "memory"} & set(settings["parts"]):
        first = ""
    return f"`kproxy run` with {runs}, a row each{first} (its default is {default})"


def targets(
    rows: list[Row], memory: dict[str, Any] | None, cutover: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Issue 15's targets, each with this run's value and whether it is met; once per kproxy
    row when the comparison ran several worker counts. The reference is Caddy without its
    access log (``REFERENCE``), which measured within ±10 % of kamal-proxy on this machine."""
    found: list[dict[str, Any]] = []

    def row(case: str, server: str) -> Row | None:
        return next((r for r in rows if r.case == case and r.server == server), None)

    def versus_caddy(
        kproxy: str, case: str, field: str, goal: float, at_least: bool, text: str
    ) -> None:
        mine, reference = row(case, kproxy), row(case, REFERENCE)
        if mine is None or reference is None or not getattr(reference, field):
            return
        ratio = getattr(mine, field) / getattr(reference, field)
        met = ratio >= goal if at_least else ratio <= goal
        value = f"{ratio:.2f}x"
        logging = row(case, "caddy")  # Caddy with its access log: shown, not judged
        if logging is not None and getattr(logging, field):
            value += f" ({getattr(mine, field) / getattr(logging, field):.2f}x Caddy with its log)"
        found.append({"target": _named(mine.label, text), "value": value, "met": met})

    for kproxy in dict.fromkeys(r.server for r in rows if r.server.startswith("kproxy")):
        one, sixteen, many, large = (case.name for case in CASES)
        versus_caddy(kproxy, sixteen, "rps", 1.0, True, "tiny, 16 conns: req/s ≥ 1.0x ref")
        versus_caddy(kproxy, many, "rps", 1.0, True, "tiny, 128 conns: req/s ≥ 1.0x ref")
        versus_caddy(kproxy, one, "p50_ms", 1.0, False, "tiny, 1 conn: p50 ≤ ref's p50")
        versus_caddy(kproxy, large, "rps", 0.9, True, "64 KiB, 16 conns: req/s ≥ 0.9x ref")
        versus_caddy(kproxy, many, "p99_ms", 2.0, False, "tiny, 128 conns: p99 ≤ 2x ref's p99")
    if memory is not None:
        mb = memory["rss_mib_idle"] * MB
        text = f"{memory['connections_open']:,} idle connections: ≤ 150 MB resident"
        found.append(
            {
                "target": _named(memory["kproxy"], text),
                "value": f"{mb:.0f} MB",
                "met": mb <= MEMORY_TARGET_MB,
            }
        )
    if cutover is not None:
        found.append(
            {
                "target": _named(cutover["kproxy"], "p99 during deploys ≤ 2x steady p99"),
                "value": f"{cutover['p99_ratio']:.2f}x steady",
                "met": cutover["p99_ratio"] <= 2.0,
            }
        )
    return found


def markdown(results: dict[str, Any], rows: list[Row]) -> str:
    facts, settings = results["machine"], results["settings"]
    lines = [
        f"# kproxy benchmark, {facts['date']}",
        "",
        f"- Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB,"
        f" {facts['os']}, Linux {facts['kernel']}, Python {facts['python']}",
        f"- Versions: kproxy {facts['kproxy']} (git {facts['kproxy_commit']}),"
        f" trio {facts['trio']}, h11 {facts['h11']}, nginx {facts['nginx']},"
        f" HAProxy {facts['haproxy']}, Caddy {facts['caddy']}, wrk {facts['wrk']},"
        f" valgrind {facts.get('valgrind', '?')}",
        f"- Settings: {settings['duration']} s per measurement after a {settings['warmup']} s"
        f" warm-up; the set run {settings['repeats']} time(s), interleaved (medians shown,"
        f" req/s range in brackets); wrk with {settings['wrk_threads']} thread(s); every"
        " proxy logs each request to a file (the trio+h11 floor, not a proxy, does not;"
        ' nor does "Caddy, no access log").',
        '- "vs ref": divided by the figure of Caddy without its access log, the reference'
        " (it ran within ±10 % of kamal-proxy on this machine); Caddy with its log is a row.",
        f"- kproxy: {_kproxy_mode(settings)}.",
        f"- Command: `{settings['command']}`",
    ]
    foreign = results.get("foreign_cpu_max")
    if foreign is not None:
        lines.append(
            f"- Other processes on the machine used up to {foreign:.0%} of its CPU during a"
            " measurement (0% is a quiet machine)."
        )
    goals = targets(rows, results.get("memory"), results.get("cutover"))
    if goals:
        lines += [
            "",
            "## Issue 15's targets (ref: Caddy without its access log)",
            "",
            "| target | this run | met |",
            "|---|---|---|",
        ]
        lines += [
            f"| {g['target']} | {g['value']} | {'yes' if g['met'] else 'no'} |" for g in goals
        ]
    if rows:
        lines += ["", "## Throughput, latency and CPU per request", "", comparison_tables(rows)]
    if "https" in results:
        lines += [
            "",
            "## HTTPS: kproxy and Caddy terminating TLS",
            "",
            https_section(results["https"]),
        ]
    if "instructions" in results:
        lines += [
            "",
            "## Instructions per request: kproxy and the trio+h11 floor",
            "",
            instructions_inprocess.markdown(results["instructions"]),
        ]
    if "scale" in results:
        largest = max(map(int, results["scale"]["per_count"]))
        lines += [
            "",
            f"## {results['scale']['kproxy']}: 1 to {largest:,} services",
            "",
            scale.markdown(results["scale"]),
        ]
    memory = results.get("memory")
    if memory is not None:
        lines += [
            "",
            f"## {memory['kproxy']}: memory with idle keep-alive connections",
            "",
            f"- {memory['connections_open']:,} of {memory['connections_requested']:,}"
            f" connections open ({memory['kproxy_open_fds']:,} descriptors in kproxy),"
            f" opened in {memory['open_seconds']:.1f} s",
            f"- resident: {memory['rss_mib_before'] * MB:.1f} MB before,"
            f" **{memory['rss_mib_idle'] * MB:.1f} MB** with the connections idle"
            f" (PSS {memory['pss_mib_idle'] * MB:.1f} MB, {memory['processes']} process(es)),"
            f" {memory['rss_mib_after_close'] * MB:.1f} MB after they closed",
            f"- {memory['kib_per_connection']:.1f} KiB per connection; at 10,000 connections"
            f" that is {memory['rss_mib_at_10k_estimate'] * MB:.1f} MB",
        ]
    cutover = results.get("cutover")
    if cutover is not None:
        lines += [
            "",
            f"## {cutover['kproxy']}: deploys under load",
            "",
            f"- wrk with {cutover['connections']} connections on the tiny body;"
            f" {cutover['deploys']} deploys back and forth between two upstream ports"
            f" (median {cutover['deploy_seconds_median'] * 1000:.0f} ms each,"
            f" max {cutover['deploy_seconds_max'] * 1000:.0f} ms)",
            f"- p99: **{cutover['during_p99_ms']:.2f} ms during deploys** vs"
            f" {cutover['steady_p99_ms']:.2f} ms steady (x{cutover['p99_ratio']:.2f});"
            f" errors during deploys: {cutover['errors_during_deploys']}",
            "- from the new target's first healthy check to the first request it served:"
            f" median {cutover['healthy_to_first_request_ms_median']:.1f} ms,"
            f" max {cutover['healthy_to_first_request_ms_max']:.1f} ms"
            f" over {len(cutover['healthy_to_first_request_ms'])} cutovers"
            " (log times have 1 ms resolution)",
        ]
    return "\n".join(lines) + "\n"


def save(directory: Path, results: dict[str, Any], text: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = results["machine"]["date"].replace(":", "").replace("+0000", "Z")
    md_path = directory / f"{stamp}.md"
    json_path = directory / f"{stamp}.json"
    md_path.write_text(text)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    return md_path, json_path
