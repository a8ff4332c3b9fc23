"""--error-pages, end to end on loopback: custom pages per service, loaded at deploy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from kproxy import DeployError, Proxy, ServiceOptions
from tests.helpers import (
    Reply,
    control,
    guard,
    hits,
    quick_options,
    request,
    start_proxy,
    start_upstream,
    unused_port,
)

PAGE_503 = """<html><body>
{{- if .Message }}
<p class="custom">{{ .Message }}</p>
{{- else }}
<p class="custom">Custom maintenance page</p>
{{- end }}
</body></html>
"""


def write_pages(directory: Path, **pages: str) -> Path:
    """``pages`` maps ``s502`` style names to template text; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in pages.items():
        (directory / f"{key.removeprefix('s')}.html").write_text(text)
    return directory


def with_pages(*args: Any, directory: Path | str, **kwargs: Any) -> Any:
    return quick_options(*args, service=ServiceOptions(error_pages=str(directory)), **kwargs)


def assert_html(reply: Reply, status: int, body: bytes) -> None:
    assert reply.status == status
    assert reply.header(b"content-type") == b"text/html; charset=utf-8"
    assert reply.body == body
    assert reply.header(b"content-length") == str(len(body)).encode()


def is_builtin(reply: Reply, status: int) -> bool:
    return reply.status == status and reply.body.startswith(b"<!doctype html>")


@guard(15)
async def test_custom_502_503_504_and_fallback(nursery: trio.Nursery, tmp_path: Path) -> None:
    pages = write_pages(
        tmp_path / "pages",
        s502="<h1>custom 502</h1>{{ .Message }}",
        s503=PAGE_503,
        s504="<h1>custom 504</h1>",
    )
    health = await start_upstream(nursery, "health")
    slow = await start_upstream(nursery, "slow")
    sick = await start_upstream(nursery, "sick", healthy=False)
    proxy, _ = await start_proxy(nursery, tmp_path)
    hosts = {"gone": "gone.test", "slow": "slow.test", "sick": "sick.test", "plain": "plain.test"}

    def options(target: Any, host: str, **kwargs: Any) -> Any:
        return quick_options(
            target,
            service=ServiceOptions(hosts=(host,), error_pages=str(pages)),
            **kwargs,
        )

    await proxy.deploy(
        "gone",
        options(f"127.0.0.1:{unused_port()}", hosts["gone"], target_health_check_port=health.port),
    )
    await proxy.deploy("slow", options(slow, hosts["slow"], target_target_timeout=0.3))
    await proxy.deploy("sick", options(sick, hosts["sick"], force=True))
    plain = quick_options(
        f"127.0.0.1:{unused_port()}",
        service=ServiceOptions(hosts=(hosts["plain"],)),
        target_health_check_port=health.port,
    )
    await proxy.deploy("plain", plain)

    assert_html(await request(proxy.http_port, host="gone.test"), 502, b"<h1>custom 502</h1>")
    slow_reply = await request(proxy.http_port, "/slow?2", host="slow.test")
    assert_html(slow_reply, 504, b"<h1>custom 504</h1>")
    assert_html(
        await request(proxy.http_port, host="sick.test"),
        503,
        b'<html><body>\n<p class="custom">Custom maintenance page</p>\n</body></html>\n',
    )
    # Another service, without --error-pages, keeps the built-in pages.
    assert is_builtin(await request(proxy.http_port, host="plain.test"), 502)


@guard(15)
async def test_status_without_a_file_falls_back(nursery: trio.Nursery, tmp_path: Path) -> None:
    pages = write_pages(tmp_path / "pages", s504="<h1>custom 504</h1>", s404="<h1>custom 404</h1>")
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", with_pages(app, directory=pages))
    await proxy.stop("web", message="Back at 10:00")
    reply = await request(proxy.http_port)
    assert is_builtin(reply, 503)
    assert b'<p class="message">Back at 10:00</p>' in reply.body


@guard(15)
async def test_404_for_unmatched_requests_is_the_builtin_page(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A 404 means no service matched, so no service's pages apply (as in kamal-proxy, whose
    router answers it before any service's error page middleware)."""
    pages = write_pages(tmp_path / "pages", s404="<h1>custom 404</h1>")
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    options = quick_options(
        app,
        service=ServiceOptions(hosts=("a.test",), path_prefixes=("/app",), error_pages=str(pages)),
    )
    await proxy.deploy("web", options)
    assert (await request(proxy.http_port, "/app/x", host="a.test")).body == b"app"
    assert is_builtin(await request(proxy.http_port, "/other", host="a.test"), 404)
    assert is_builtin(await request(proxy.http_port, "/app", host="b.test"), 404)


@guard(15)
async def test_stop_message_is_rendered_and_escaped(nursery: trio.Nursery, tmp_path: Path) -> None:
    pages = write_pages(tmp_path / "pages", s503=PAGE_503)
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    sock = tmp_path / "kproxy.sock"
    answer = await control(
        sock,
        f"deploy web --target {app.address} --health-check-interval 100ms --error-pages {pages}",
    )
    assert answer[0] == f"  web: error pages from {pages}: 503"
    assert answer[-1] == "OK deployed web"
    message = "<script>alert('x')</script> & {{ .Message }}"
    assert (await control(sock, f'stop web --message "{message}"'))[-1] == "OK stopped web"
    assert_html(
        await request(proxy.http_port),
        503,
        b'<html><body>\n<p class="custom">&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;'
        b" &amp; {{ .Message }}</p>\n</body></html>\n",
    )
    assert await control(sock, "resume web") == ["OK resumed web"]
    assert (await request(proxy.http_port)).body == b"app"


@guard(15)
async def test_pages_are_read_once_at_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    pages = write_pages(tmp_path / "pages", s503="<p>v1 {{ .Message }}</p>")
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", with_pages(app, directory=pages))
    await proxy.stop("web", message="m")
    write_pages(pages, s503="<p>v2 {{ .Message }}</p>")
    assert (await request(proxy.http_port)).body == b"<p>v1 m</p>"  # kept in memory
    (pages / "503.html").unlink()
    pages.rmdir()
    assert (await request(proxy.http_port)).body == b"<p>v1 m</p>"  # no disk reads at all
    await proxy.resume("web")
    # A redeploy reads the directory again; one without --error-pages goes back to built-ins.
    write_pages(pages, s503="<p>v3 {{ .Message }}</p>")
    await proxy.deploy("web", with_pages(app, directory=pages))
    await proxy.stop("web", message="m")
    assert (await request(proxy.http_port)).body == b"<p>v3 m</p>"
    await proxy.resume("web")
    await proxy.deploy("web", quick_options(app))
    await proxy.stop("web", message="m")
    assert is_builtin(await request(proxy.http_port), 503)


async def failed_deploy(
    nursery: trio.Nursery, tmp_path: Path, directory: Path
) -> tuple[Proxy, list[str]]:
    """Deploy "web" with built-in pages, then a new target with ``directory``: returns the
    answer to the second deploy, after checking it changed nothing."""
    one = await start_upstream(nursery, "one")
    two = await start_upstream(nursery, "two")
    good = write_pages(tmp_path / "good", s503="<p>good {{ .Message }}</p>")
    proxy, _ = await start_proxy(nursery, tmp_path)
    await proxy.deploy("web", with_pages(one, directory=good))
    state_file = tmp_path / "state" / "kproxy.state.json"
    state_before = state_file.read_bytes()
    answer = await control(
        tmp_path / "kproxy.sock",
        f"deploy web --target {two.address} --health-check-interval 100ms "
        f"--error-pages {directory}",
    )
    assert len(answer) == 1  # the error, and no progress: it failed before any health check
    assert hits(two) == 0
    assert state_file.read_bytes() == state_before
    assert (await request(proxy.http_port)).body == b"one"
    assert [s.targets for s in proxy.services()] == [(one.address,)]
    await proxy.stop("web", message="m")
    assert (await request(proxy.http_port)).body == b"<p>good m</p>"  # the old pages stay
    return proxy, answer


@guard(15)
async def test_bad_template_fails_the_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    bad = write_pages(
        tmp_path / "bad", s502="<p>fine</p>", s503="<p>\n  {{ .Status }} {{ .Message }}</p>"
    )
    _, answer = await failed_deploy(nursery, tmp_path, bad)
    assert answer == [
        f"ERR --error-pages {bad}: 503.html, line 2, column 3: unsupported action "
        "{{ .Status }}; expected {{ .Message }}, {{ if .Message }}, {{ else }} and {{ end }}"
    ]


@guard(15)
async def test_unclosed_if_fails_the_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    bad = write_pages(tmp_path / "bad", s504="{{ if .Message }}\n")
    _, answer = await failed_deploy(nursery, tmp_path, bad)
    assert answer == [
        f"ERR --error-pages {bad}: 504.html, line 1, column 1: {{{{ if .Message }}}} is never "
        "closed; expected {{ end }} before the end of the file"
    ]


@guard(15)
async def test_missing_directory_fails_the_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    _, answer = await failed_deploy(nursery, tmp_path, missing)
    assert answer == [
        f"ERR --error-pages {missing}: cannot read the directory: No such file or directory"
    ]


@guard(15)
async def test_directory_without_pages_fails_the_deploy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    wrong = tmp_path / "public"
    wrong.mkdir()
    (wrong / "index.html").write_text("<p>the app's files, not error pages</p>")
    _, answer = await failed_deploy(nursery, tmp_path, wrong)
    assert answer == [
        f"ERR --error-pages {wrong}: no error pages in the directory; expected <status>.html "
        "files (400.html to 599.html, such as 502.html or 503.html)"
    ]


@guard(15)
async def test_unreadable_page_fails_the_deploy(nursery: trio.Nursery, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "502.html").mkdir(parents=True)
    _, answer = await failed_deploy(nursery, tmp_path, bad)
    assert answer == [f"ERR --error-pages {bad}: 502.html is not a regular file"]


@guard(20)
async def test_restore_reads_the_pages_again(nursery: trio.Nursery, tmp_path: Path) -> None:
    pages = write_pages(tmp_path / "pages", s503="<p>custom {{ .Message }}</p>")
    app = await start_upstream(nursery, "app")
    async with trio.open_nursery() as first:
        proxy, _ = await start_proxy(first, tmp_path)
        await proxy.deploy("web", with_pages(app, directory=pages))
        await proxy.stop("web", message="m")
        first.cancel_scope.cancel()

    async with trio.open_nursery() as second:
        proxy, logs = await start_proxy(second, tmp_path)
        assert (await request(proxy.http_port)).body == b"<p>custom m</p>"
        assert (
            logs.records("State restore: error pages unavailable, using the built-in pages") == []
        )
        second.cancel_scope.cancel()

    # The directory went away (an old release's files, say): the service comes back, with the
    # built-in pages, and keeps the directory in its options for the next restart or deploy.
    (pages / "503.html").unlink()
    pages.rmdir()
    proxy, logs = await start_proxy(nursery, tmp_path)
    assert [(s.name, s.state) for s in proxy.services()] == [("web", "stopped")]
    reply = await request(proxy.http_port)
    assert is_builtin(reply, 503)
    assert b'<p class="message">m</p>' in reply.body
    [record] = logs.records("State restore: error pages unavailable, using the built-in pages")
    assert record["service"] == "web"
    assert record["error"] == (
        f"--error-pages {pages}: cannot read the directory: No such file or directory"
    )
    await proxy.resume("web")
    assert (await request(proxy.http_port)).body == b"app"
    # The next save keeps the directory: a later restart with it back uses it again.
    state = json.loads((tmp_path / "state" / "kproxy.state.json").read_text())
    assert state["services"][0]["options"]["service"]["error_pages"] == str(pages)


@guard(15)
async def test_custom_413_and_500_with_buffering(nursery: trio.Nursery, tmp_path: Path) -> None:
    pages = write_pages(tmp_path / "pages", s413="<h1>too big</h1>", s500="<h1>oops</h1>")
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    options = with_pages(
        app,
        directory=pages,
        target_buffer_requests=True,
        target_max_request_body=10,
        target_buffer_responses=True,
        target_max_response_body=2,
    )
    await proxy.deploy("web", options)
    too_big = await request(proxy.http_port, method="POST", body=b"x" * 11)
    assert_html(too_big, 413, b"<h1>too big</h1>")
    assert_html(await request(proxy.http_port), 500, b"<h1>oops</h1>")  # "app" is 3 bytes


@guard(10)
async def test_embedders_get_a_deploy_error(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = await start_upstream(nursery, "app")
    proxy, _ = await start_proxy(nursery, tmp_path)
    bad = write_pages(tmp_path / "bad", s502="{{ .Nope }}")
    with pytest.raises(DeployError, match=r"502\.html, line 1, column 1: unsupported action"):
        await proxy.deploy("web", with_pages(app, directory=bad))
    assert proxy.services() == []
    assert hits(app) == 0
