"""``python serve.py`` against clients that send too much, too slowly, or oddly: raw sockets
and real HTTP to a real server on 127.0.0.1, with bounded traffic."""
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Server, free_port, run_cli

REVIEW = "wonderful superb the film was loved and brilliant the plot moving"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def exchange(port: int, data: bytes, wait: float = 30) -> tuple[float, bytes]:
    """Send ``data`` on a new connection; return how long until the server closed it, and what it said."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        started = time.monotonic()
        conn.sendall(data)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except socket.timeout:
            return float("inf"), answer
        except ConnectionResetError:
            pass
        return time.monotonic() - started, answer


def status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    return int(head.split()[1]), json.loads(body)["error"]


@pytest.mark.slow
def test_a_client_that_stops_sending_headers_is_cut_off_within_seconds(server):
    results = {}

    def probe(name, data):
        results[name] = exchange(server.port, data)

    threads = [threading.Thread(target=probe, args=(name, data)) for name, data in [
        ("half headers", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "),
        ("nothing", b""),
        ("second request half sent", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /heal")]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, (seconds, answer) in results.items():
        assert seconds < 8, (name, seconds)
    assert status_and_error(results["half headers"][1]) == (408, "the request headers did not arrive within 5 s")
    assert results["nothing"][1] == b""  # closed without a word, as an idle kept-alive connection is
    assert b'"status":"ok"' in results["second request half sent"][1]


@pytest.mark.slow
def test_a_body_that_stops_arriving_is_cut_off(server):
    seconds, answer = exchange(server.port, b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                                            b'{"texts": ')
    assert seconds < 15
    assert status_and_error(answer) == (408, "the request body stopped arriving (10 bytes in 10 s)")


def test_content_length_with_transfer_encoding_is_refused(server):
    # h11 would read the chunked body and ignore Content-Length; a proxy in front may do the opposite.
    smuggled = b'GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
    body = b'{"texts": ["ok"]}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    seconds, answer = exchange(server.port, b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Content-Type: application/json\r\n"
                                            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            % len(chunked) + chunked + smuggled)
    status, error = status_and_error(answer)
    assert status == 400 and "both Content-Length and Transfer-Encoding" in error
    assert answer.count(b"HTTP/1.1") == 1  # the connection closed: nothing after it was read as a request


def test_a_request_that_is_not_http_gets_json(server):
    assert status_and_error(exchange(server.port, b"HELLO\r\n\r\n")[1]) == (400, "not a valid HTTP request")


def test_lone_surrogates_are_read_as_replacement_characters(http):
    # JSON escapes as a client writes them: "\ud800" is half a UTF-16 pair, no character.
    raw = b'{"texts": ["\\ud800 ' + REVIEW.encode() + b'", "\\udfff", "' + REVIEW.encode() + b' \\ud83d\\ude00"]}'
    response = http.post("api/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    replaced = http.post("api/v1/predict", json={"texts": ["\ufffd " + REVIEW, "\ufffd", REVIEW + " \U0001f600"]})
    assert response.json() == replaced.json()


UNREADABLE = [
    ("not UTF-8", {}, b'{"texts": ["caf\xe9"]}', 400, "body: not UTF-8 (byte 15: invalid continuation byte)"),
    ("gzip", {"content-encoding": "gzip"}, gzip.compress(b'{"texts": ["ok"]}'), 415,
     "Content-Encoding gzip: compressed request bodies are not accepted; send the body uncompressed"),
    ("deep", {}, b'{"texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "body: JSON nested too deeply"),
]


@pytest.mark.parametrize("headers,body,status,error", [u[1:] for u in UNREADABLE], ids=[u[0] for u in UNREADABLE])
def test_unreadable_bodies_get_the_api_error_shape(http, headers, body, status, error):
    response = http.post("api/v1/predict", content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_head_and_options_are_answered(http):
    got = http.get("healthz")
    head = http.head("healthz")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]
    assert http.head("api/v1/models").status_code == 200
    options = http.options("healthz")
    assert options.status_code == 204 and options.headers["allow"] == "GET, HEAD, OPTIONS"
    assert http.options("api/v1/predict").headers["allow"] == "POST, OPTIONS"
    wrong = http.post("healthz")
    assert wrong.status_code == 405 and wrong.json() == {"error": "/healthz takes GET or HEAD, not POST"}
    assert wrong.headers["allow"] == "GET, HEAD, OPTIONS"


def test_models_and_metrics_do_not_reveal_server_paths(http, tiny_model):
    models = http.get("api/v1/models")
    assert [m["name"] for m in models.json()["models"]] == ["tiny", "again"]
    assert all("path" not in m for m in models.json()["models"])
    metrics = http.get("metrics").text
    assert 'sentiment_model_info{kind="lstm",name="tiny",version="' in metrics
    for text in (models.text, metrics):
        assert str(tiny_model) not in text and str(Path(tiny_model).parent) not in text


def test_other_web_pages_get_no_cross_origin_access_by_default(http):
    for origin in ("http://localhost:3000", "http://127.0.0.1:9999", "https://evil.example"):
        for path in ("api/v1/models", "healthz", "gradio_api/info", "config"):
            response = http.get(path, headers={"origin": origin})
            assert "access-control-allow-origin" not in response.headers, (origin, path)
        preflight = http.options("api/v1/predict", headers={"origin": origin, "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code == 400 and preflight.json() == {"error": "Disallowed CORS origin"}


@pytest.mark.slow
def test_serve_says_when_the_host_is_not_an_address_of_this_machine(tiny_model):
    not_an_address = run_cli("serve.py", "--model", tiny_model, "--host", "256.1.1.1", timeout=120)
    assert not_an_address.returncode == 2
    assert not_an_address.stderr.startswith("error: --host 256.1.1.1: not an IP address or a known host name")
    elsewhere = run_cli("serve.py", "--model", tiny_model, "--host", "192.0.2.1", timeout=120)  # a documentation net
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.startswith("error: --host 192.0.2.1: not an address of this machine")
    bad_origin = run_cli("serve.py", "--model", tiny_model, "--cors-origin", "localhost:3000", timeout=120)
    assert bad_origin.returncode == 2 and bad_origin.stderr.startswith("error: --cors-origin: 'localhost:3000'")


@pytest.fixture(scope="module")
def roomy(tiny_model, tmp_path_factory):
    """A server that takes big bodies (12 MB) but computes one request at a time, and allows one other origin."""
    log = tmp_path_factory.mktemp("roomy") / "serve.log"
    running = Server("--model", tiny_model, "--precision", "float32", "--max-upload-mb", "12", "--concurrency", "1",
                     "--cors-origin", "http://app.example:8080", log=log).wait_ready()
    yield running
    running.stop()


@pytest.mark.slow
def test_an_origin_the_user_allows_gets_cross_origin_access(roomy):
    allowed = {"origin": "http://app.example:8080"}
    response = httpx.get(roomy.url + "api/v1/models", headers=allowed)
    assert response.headers["access-control-allow-origin"] == "http://app.example:8080"
    preflight = httpx.options(roomy.url + "api/v1/predict",
                              headers={**allowed, "access-control-request-method": "POST",
                                       "access-control-request-headers": "content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example:8080"
    other = httpx.get(roomy.url + "api/v1/models", headers={"origin": "http://localhost:8080"})
    assert "access-control-allow-origin" not in other.headers


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory use from /proc")
def test_memory_follows_concurrency_not_connections(roomy):
    # A body of a million tiny texts takes over ten times its size once parsed; every
    # connection reading and parsing one at once grew the server by gigabytes.
    texts = 1_500_000
    body = json.dumps({"texts": ["ab"] * texts}).encode()
    request = (b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    before, peak, done = _rss_mb(roomy.proc.pid), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb(roomy.proc.pid))
            time.sleep(0.02)

    answers = []
    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=lambda: answers.append(exchange(roomy.port, request, wait=300)[1]))
               for _ in range(12)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    done.set()
    sampler.join()
    assert len(answers) == 12
    for answer in answers:
        assert status_and_error(answer) == (413, f"texts: {texts:,} texts; the limit is 128 per request "
                                                 "(--max-batch)")
    # One body parsed at a time (--concurrency 1) takes about 150 MB; twelve took over a gigabyte.
    assert peak[0] - before < 500, (before, peak[0])


@pytest.mark.slow
def test_sigterm_stops_the_server_and_removes_its_temporary_files(tiny_model, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmpdir)}
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sentiment", "serve", "--model", str(tiny_model),
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        [results] = tmpdir.glob("sentiment-scores-*")
        (results / "reviews-scored.csv").write_text("text,label\n")  # as the file tab leaves one
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmpdir.glob("sentiment-scores-*")) == []
