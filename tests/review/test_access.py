"""Who may use the review page: the Host check (DNS rebinding), the token off loopback, the Origin of
corrections, the body limit, and the address the command prints. Real clients and real servers:
Starlette's test client, uvicorn on loopback addresses (nothing listens beyond loopback)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import live

from promptcam.review.access import Access, review_urls
from promptcam.review.app import create_app
from promptcam.review.index import build_index, locate

pytest.importorskip("httpx", reason="starlette's test client needs httpx (the dev extra)")
from starlette.testclient import TestClient  # noqa: E402

TOKEN = "s3cret-token-for-the-tests"
LAN = "192.0.2.10"  # TEST-NET-1: never bound, only named in the Host header the test client sends


def review_app(station_db: Path, access: Access | None):
    source = locate(station_db)
    build_index(source)
    return create_app(source, access=access)


def lan_client(station_db: Path, **access) -> TestClient:
    """A client of a review as if bound to a LAN address with a token (the app sees only its Host header)."""
    app = review_app(station_db, Access.for_bind(LAN, token=TOKEN, **access))
    return TestClient(app, base_url=f"http://{LAN}:8787", raise_server_exceptions=False, follow_redirects=False)


def test_off_loopback_the_page_needs_its_token(station_db: Path) -> None:
    client = lan_client(station_db)
    for path in ("/", "/item/1", "/thumb/1", "/photo/1", "/static/review.css"):
        answer = client.get(path)
        assert answer.status_code == 403 and "token" in answer.text, path
    assert client.post("/api/review/1", json={"label": "fox"}).status_code == 403
    assert client.get("/", params={"token": "wrong"}).status_code == 403
    client.cookies.set("promptcam_review_token_8787", "wrong")
    assert client.get("/").status_code == 403
    client.cookies.clear()

    # the token once in the URL: kept in an HttpOnly SameSite=Strict cookie, and taken out of the address
    # by a refresh from the page itself (a Strict cookie never rides a redirect of a cross-site navigation)
    answer = client.get("/item/1", params={"token": TOKEN, "sort": "file"})
    assert answer.status_code == 200 and refresh_target(answer.text) == "/item/1?sort=file"
    assert answer.headers["cache-control"] == "no-store" and TOKEN not in answer.text
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"promptcam_review_token_8787={TOKEN};")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert client.get("/item/1", params={"sort": "file"}).status_code == 200
    assert client.get("/thumb/1").status_code == 200
    answer = client.post("/api/review/1", json={"label": "fox"})
    assert answer.status_code == 200 and answer.json()["verdict"] == "confirmed"


def refresh_target(html: str) -> str | None:
    found = re.search(r'<meta http-equiv="refresh" content="0; url=([^"]*)">', html)
    return found[1] if found else None


def test_a_token_in_the_url_of_a_correction_is_accepted(station_db: Path) -> None:
    client = lan_client(station_db)
    answer = client.post("/api/review/1", params={"token": TOKEN}, json={"label": "fox"})
    assert answer.status_code == 200 and answer.json()["verdict"] == "confirmed"


@pytest.mark.parametrize(("bound", "allowed", "refused"), [
    (LAN, [LAN, f"{LAN}:8787", "review.lan:8787"], ["evil.example", "localhost:8787", "127.0.0.1:8787", "10.0.0.1"]),
    ("0.0.0.0", [LAN, "10.1.2.3:8787", "[fe80::1]:8787", "localhost:8787", "review.lan"],
     ["evil.example", "evil.example:8787", "attacker.localhost.evil.example"]),
    ("127.0.0.1", ["127.0.0.1:8787", "localhost:8787", "LOCALHOST.", "app.localhost:8787", "review.lan"],
     ["evil.example:8787", LAN, "127.0.0.2:8787", "[::1]:8787", "localhost.evil.example"]),
    ("127.0.0.2", ["127.0.0.2:8787", "localhost:8787"], ["127.0.0.1:8787", "evil.example"]),
    ("::1", ["[::1]:8787", "[0:0::1]:8787", "localhost:8787"], ["::1", "[::2]:8787", "127.0.0.1:8787", "evil.example"]),
])
def test_the_host_check_allows_only_the_bound_address_and_given_names(
        station_db: Path, bound: str, allowed: list[str], refused: list[str]) -> None:
    access = Access.for_bind(bound, names=["review.lan"], token=TOKEN)
    client = TestClient(review_app(station_db, access), raise_server_exceptions=False, follow_redirects=False)
    for host in allowed:
        client.cookies.clear()
        answer = client.get("/", params={"token": TOKEN}, headers={"host": host})
        assert answer.status_code == 200 and refresh_target(answer.text) == "/", (bound, host, answer.status_code)
    for host in refused + ["", "[::1", "a b", "host:port", "evil.example:8787@x"]:
        answer = client.get("/", params={"token": TOKEN}, headers={"host": host})
        assert answer.status_code == 400 and "host" in answer.text.lower(), (bound, host, answer.status_code)


def test_corrections_check_their_origin(station_db: Path) -> None:
    client = lan_client(station_db)
    client.get("/", params={"token": TOKEN})
    for origin in ("http://evil.example", "http://evil.example:8787", "null", f"http://{LAN}:9999",
                   f"https://{LAN}:8787", "not a url"):
        answer = client.post("/api/review/1", json={"label": "fox"}, headers={"origin": origin})
        assert answer.status_code == 403 and "origin" in answer.json()["error"], origin
        assert client.delete("/api/review/1", headers={"origin": origin}).status_code == 403
    answer = client.post("/api/review/1", json={"label": "fox"}, headers={"origin": f"http://{LAN}:8787"})
    assert answer.status_code == 200
    assert client.get("/", headers={"origin": "http://evil.example"}).status_code == 200  # reading is not changing


def test_on_loopback_no_token_is_needed_but_the_host_is_checked(station_db: Path) -> None:
    access = Access.for_bind("127.0.0.1")
    assert access.token is None
    client = TestClient(review_app(station_db, access), base_url="http://127.0.0.1:8787",
                        raise_server_exceptions=False)
    assert client.get("/").status_code == 200
    assert client.post("/api/review/1", json={"label": "fox"}).status_code == 200
    assert client.get("/", headers={"host": "evil.example:8787"}).status_code == 400  # DNS rebinding to 127.0.0.1
    answer = client.post("/api/review/1", json={"label": "fox"}, headers={"origin": "http://evil.example:8787"})
    assert answer.status_code == 403


def test_off_loopback_a_token_is_always_made() -> None:
    first, second = Access.for_bind("0.0.0.0"), Access.for_bind(LAN)
    assert first.token and second.token and first.token != second.token and len(first.token) >= 32
    assert Access.for_bind("::", token="given").token == "given"
    assert Access.for_bind("127.0.0.1", token="given").token == "given"  # asked for: required on loopback too
    with pytest.raises(ValueError, match="token"):
        Access.for_bind(LAN, token=" ")


def test_the_printed_urls_name_the_bound_address() -> None:
    assert review_urls("127.0.0.2", 8787, None) == ["http://127.0.0.2:8787/"]
    assert review_urls("::1", 8787, None) == ["http://[::1]:8787/"]
    assert review_urls(LAN, 80, "a b") == [f"http://{LAN}:80/?token=a+b"]
    wildcard = review_urls("0.0.0.0", 8787, "t")
    assert wildcard[0] == "http://127.0.0.1:8787/?token=t" and len(wildcard) == 2 and "0.0.0.0" not in wildcard[1]
    assert review_urls("::", 8787, "t")[0] == "http://[::1]:8787/?token=t"


# -- a real server ------------------------------------------------------------------------------


def first_answer(address: tuple[str, int], head: bytes, body: bytes, timeout: float = 5.0) -> bytes:
    """Send ``head`` and the start of a body that is never finished; the response the server sends
    meanwhile (headers and body, by its Content-Length), or what came before ``timeout``."""
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.sendall(head + body)
        received = b""
        try:
            while not _complete(received):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass  # still waiting for the rest of the body: no answer
        return received


def _complete(response: bytes) -> bool:
    head, separator, body = response.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(separator) and length is not None and len(body) >= int(length[1])


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_large_correction_body_is_refused_before_it_is_read(station_db: Path, framing: str) -> None:
    """300 MB announced (or chunks without end): 413 as soon as the limit is passed, the rest never read."""
    with live(review_app(station_db, Access.for_bind("127.0.0.1"))) as (host, port):
        head = (f"POST /api/review/1 HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                .encode())
        if framing == "content-length":
            head += b"Content-Length: 300000000\r\n\r\n"
            body = b'{"label": "' + b"x" * 1024
        else:
            head += b"Transfer-Encoding: chunked\r\n\r\n"
            body = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(8))  # 8 KiB, no final chunk
        started = time.monotonic()
        answer = first_answer((host, port), head, body)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"too large" in answer and time.monotonic() - started < 4


def test_a_deeply_nested_label_is_a_clean_400(station_db: Path) -> None:
    client = TestClient(review_app(station_db, None), raise_server_exceptions=False)
    body = b'{"label": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert len(body) < 4096
    answer = client.post("/api/review/1", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "body must be JSON" in answer.json()["error"]
    answer = client.post("/api/review/1", content=b'{"label": "\xff"}', headers={"content-type": "application/json"})
    assert answer.status_code == 400
    answer = client.post("/api/review/1", json={"label": "fox"}, headers={"content-length": "x"})
    assert answer.status_code == 400


# -- the command ----------------------------------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def review_command(results: Path, tmp_path: Path, *args: str) -> Iterator[str]:
    """``promptcam-review RESULTS ARGS`` (the installed command); yields the URL it prints."""
    log = tmp_path / "review.log"
    exe = Path(sys.executable).parent / "promptcam-review"
    env = {k: v for k, v in os.environ.items() if k != "PROMPTCAM_REVIEW_TOKEN"}
    with open(log, "w") as out:
        process = subprocess.Popen([str(exe), str(results), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"review page: (http://\S+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield found[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def raw_get(address: str, port: int, path: str, host: str, cookie: str = "") -> tuple[int, dict[str, str], str]:
    import http.client

    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        if cookie:
            conn.putheader("Cookie", cookie)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read().decode("utf-8", "replace")
    finally:
        conn.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("address", ["127.0.0.2", "::1"])
def test_the_command_answers_on_the_address_it_binds(station_db: Path, tmp_path: Path, address: str) -> None:
    if ":" in address and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port = free_port(address)
    with review_command(station_db, tmp_path, "--host", address, "--port", str(port)) as url:
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        assert url == f"http://{netloc}/"  # no token on loopback
        status, _, html = raw_get(address, port, "/", netloc)
        assert status == 200 and "4 results" in html
        assert raw_get(address, port, "/", "localhost")[0] == 200
        assert raw_get(address, port, "/", "evil.example")[0] == 400


def test_the_command_takes_a_token_and_extra_host_names(station_db: Path, tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    with review_command(station_db, tmp_path, "--port", str(port), "--token", TOKEN,
                        "--allow-host", "review.lan", "--allow-host", "other.lan") as url:
        assert url == f"http://127.0.0.1:{port}/?token={TOKEN}"
        assert raw_get("127.0.0.1", port, "/", f"127.0.0.1:{port}")[0] == 403
        status, headers, html = raw_get("127.0.0.1", port, f"/?token={TOKEN}", f"review.lan:{port}")
        assert status == 200 and refresh_target(html) == "/"
        status, _, html = raw_get("127.0.0.1", port, f"//evil.example/?token={TOKEN}", f"127.0.0.1:{port}")
        assert refresh_target(html) == "/evil.example/"  # stays on this page
        cookie = headers["set-cookie"].split(";")[0]
        assert raw_get("127.0.0.1", port, "/", f"other.lan:{port}", cookie)[0] == 200
        assert raw_get("127.0.0.1", port, "/", "evil.example", cookie)[0] == 400


def test_the_help_names_the_new_options() -> None:
    from click.testing import CliRunner

    from promptcam.review.cli import main

    text = CliRunner().invoke(main, ["serve", "--help"]).output
    for words in ("--token", "--allow-host", "PROMPTCAM_REVIEW_TOKEN", "?token="):
        assert words in text, words
