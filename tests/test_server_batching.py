"""Many callers at once: the shared batcher, back-pressure, and a graceful stop, over real HTTP."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from sentiment import load_bundle

from conftest import ROOT, Server, free_port, make_reviews

REVIEWS = [text for text, _ in make_reviews(60, seed=7)] + ["", "zzzq qqqx", "loved it"]


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"{name}{{") and want in line)


def _requests(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(REVIEWS, rng.randint(1, 8)) for _ in range(n)]


def _in_threads(count: int, work) -> None:
    errors = []

    def run(i):
        try:
            work(i)
        except BaseException as exc:  # re-raised in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("options,error", [
    ({"max_batch": 2000}, "--max-queue (1,024) must be at least --max-batch (2,000)"),
    ({"max_batch_size": 0}, "--max-batch-size must be at least 1 (got 0)"),
    ({"batch_wait_ms": float("nan")}, "--batch-wait-ms must be between 0 and 10000 (got nan)"),
    ({"request_timeout_s": 0}, "--request-timeout-s must be above 0 and at most 3600 (got 0)"),
    ({"replicas": 2}, "--address and --replicas are options of --engine ray"),
    ({"engine": "ray", "share": True}, "--share opens the page, which --engine ray does not serve (it serves the "
                                       "JSON API)"),
])
def test_batching_options_are_checked_up_front(options, error):
    from sentiment.errors import SentimentError
    from sentiment.serve.app import ServeConfig

    with pytest.raises(SentimentError) as raised:
        ServeConfig(**options)
    assert str(raised.value) == error


@pytest.fixture(scope="module")
def batching_server(tiny_model, tmp_path_factory):
    # Small batches and a long wait: concurrent requests are certainly joined, and a request
    # of 8 texts is split over batches of 3.
    running = Server("--model", tiny_model, "--precision", "float32", "--concurrency", "1", "--max-batch", "8",
                     "--max-batch-size", "3", "--batch-wait-ms", "20",
                     log=tmp_path_factory.mktemp("batching") / "serve.log").wait_ready()
    yield running
    running.stop()


def test_concurrent_callers_get_what_scoring_alone_gives(batching_server, tiny_model):
    clf = load_bundle(tiny_model, precision="float32")
    work = _requests(96, seed=1)
    answers: dict[int, dict] = {}
    before = httpx.get(batching_server.url + "metrics").text

    def client(i):
        with httpx.Client(base_url=batching_server.url, timeout=60) as http:
            for k in range(i, len(work), 12):
                response = http.post("api/v1/predict", json={"texts": work[k]})
                assert response.status_code == 200, response.text
                answers[k] = response.json()

    page_texts = [REVIEWS[i] for i in range(0, 24)]
    page_answers: dict[int, dict] = {}

    def page(i):  # the page's own predictions, through the same batcher as the API's
        with httpx.Client(base_url=batching_server.url, timeout=60) as http:
            for k in range(i, len(page_texts), 4):
                event = http.post("gradio_api/call/predict", json={"data": [page_texts[k]]}).json()["event_id"]
                stream = http.get(f"gradio_api/call/predict/{event}").text
                assert "event: complete" in stream, stream
                page_answers[k] = json.loads(stream.split("data:", 1)[1].strip().splitlines()[0])[0]

    _in_threads(16, lambda i: client(i) if i < 12 else page(i - 12))
    alone = clf.scores(page_texts)
    for k, answer in enumerate([page_answers[k] for k in range(len(page_texts))]):
        confidences = {c["label"]: c["confidence"] for c in answer["confidences"]}
        assert confidences[clf.classes_[1]] == pytest.approx(alone.p_positive[k], abs=1e-6)
    for k, texts in enumerate(work):
        alone = clf.scores(texts)  # this request's texts, scored by themselves
        results = answers[k]["results"]
        assert len(results) == len(texts)
        assert [r["known_words"] for r in results] == alone.known_words.tolist()
        got = [np.nan if r["p_positive"] is None else r["p_positive"] for r in results]
        expected = np.where(alone.judged, alone.p_positive, np.nan)
        np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)
        assert [r["label"] for r in results] == alone.labels()
    after = httpx.get(batching_server.url + "metrics").text
    batches = _metric(after, "sentiment_batch_size_count") - _metric(before, "sentiment_batch_size_count")
    texts = _metric(after, "sentiment_batch_size_sum") - _metric(before, "sentiment_batch_size_sum")
    assert texts == sum(map(len, work)) + len(page_texts)
    # Joined: fewer forward passes than pieces of at most 3 texts (each request's texts cut
    # in threes, each page call one text), so pieces of different requests shared one;
    # split: none over 3 texts.
    pieces = sum(-(-len(texts) // 3) for texts in work) + len(page_texts)
    assert batches < pieces, (batches, pieces)
    assert _metric(after, "sentiment_batch_size_bucket", le="4.0") == _metric(after, "sentiment_batch_size_count")
    assert _metric(after, "sentiment_batch_wait_seconds_count") > 0
    assert "sentiment_queue_depth{model=" in after


def test_a_lone_request_does_not_wait_for_company(batching_server):
    with httpx.Client(base_url=batching_server.url, timeout=60) as http:
        http.post("api/v1/predict", json={"texts": ["warm"]})
        before = http.get("metrics").text
        for _ in range(5):
            assert http.post("api/v1/predict", json={"texts": ["loved it"]}).status_code == 200
        after = http.get("metrics").text
    # Each lone request started its batch at once, well inside the 20 ms wait for company.
    fast = _metric(after, "sentiment_batch_wait_seconds_bucket", le="0.01") - \
        _metric(before, "sentiment_batch_wait_seconds_bucket", le="0.01")
    assert fast == 5


@pytest.fixture(scope="module")
def crowded_server(tiny_model, tmp_path_factory):
    running = Server("--model", tiny_model, "--precision", "float32", "--concurrency", "1", "--max-batch", "4",
                     "--max-batch-size", "2", "--max-queue", "4", "--batch-wait-ms", "5", "--request-timeout-s", "5",
                     log=tmp_path_factory.mktemp("crowded") / "serve.log").wait_ready()
    yield running
    running.stop()


def test_past_the_queue_limit_callers_are_told_to_come_back(crowded_server, tiny_model):
    clf = load_bundle(tiny_model, precision="float32")
    statuses: list[int] = []
    refusals: list[httpx.Response] = []
    page_answers: list[str] = []
    stop_at = time.monotonic() + 3

    def client(i):
        with httpx.Client(base_url=crowded_server.url, timeout=30) as http:
            while time.monotonic() < stop_at:
                texts = random.Random(i).sample(REVIEWS, 4)
                started = time.monotonic()
                response = http.post("api/v1/predict", json={"texts": texts})
                assert time.monotonic() - started < 5 + 2  # the deadline holds
                statuses.append(response.status_code)
                if response.status_code == 503:
                    refusals.append(response)
                else:
                    assert response.status_code == 200, response.text
                    got = [r["p_positive"] or 0.0 for r in response.json()["results"]]
                    alone = clf.scores(texts)
                    np.testing.assert_allclose(got, np.where(alone.judged, alone.p_positive, 0.0), atol=1e-6)
                if i == 0:  # one caller of the page's own API among them
                    event = http.post("gradio_api/call/predict", json={"data": ["loved it"]}).json()["event_id"]
                    page_answers.append(http.get(f"gradio_api/call/predict/{event}").text)

    _in_threads(24, client)
    assert 200 in statuses and refusals, statuses
    for response in refusals:
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error.startswith("the server is busy: ") and "(--max-queue); try again in a moment" in error
    for answer in page_answers:
        assert "event: complete" in answer or "The server is busy: try again in a moment." in answer, answer
    # Once the crowd is gone, the queue is empty again.
    response = httpx.post(crowded_server.url + "api/v1/predict", json={"texts": ["loved it"]})
    assert response.status_code == 200
    assert _metric(httpx.get(crowded_server.url + "metrics").text, "sentiment_queue_depth") == 0


def _slow_request(port: int, texts: list[str], halfway: threading.Event, go_on: threading.Event) -> tuple[int, dict]:
    """A predict request whose body arrives in two halves, the second once ``go_on`` is set."""
    body = json.dumps({"texts": texts}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % len(body) + body[:len(body) // 2])
        halfway.set()
        go_on.wait(30)
        time.sleep(0.3)
        sock.sendall(body[len(body) // 2:])
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, rest = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(rest)


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_answers_the_requests_in_flight_and_exits_0(tiny_model, tmp_path, signum):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "serve.py", "--model", str(tiny_model), "--port", str(port),
                                 "--precision", "float32"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        server = Server.__new__(Server)
        server.proc, server.log, server.url = proc, log, f"http://127.0.0.1:{port}/"
        server.wait_ready()
        clf = load_bundle(tiny_model, precision="float32")
        work = _requests(6, seed=3)
        halfway = [threading.Event() for _ in work]
        go_on = threading.Event()
        answers = {}

        def client(i):
            answers[i] = _slow_request(port, work[i], halfway[i], go_on)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(work))]
        for t in threads:
            t.start()
        for event in halfway:
            assert event.wait(30)
        proc.send_signal(signum)
        signalled = time.monotonic()
        go_on.set()
        for t in threads:
            t.join(30)
        assert proc.wait(timeout=15) == 0, log.read_text()
        assert time.monotonic() - signalled < 8
        for i, texts in enumerate(work):
            status, body = answers[i]
            assert status == 200, body
            alone = clf.scores(texts)
            got = [r["p_positive"] or 0.0 for r in body["results"]]
            np.testing.assert_allclose(got, np.where(alone.judged, alone.p_positive, 0.0), atol=1e-6)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()


class _Unreadable:
    """A value a program hands the batcher whose text cannot be had: str() of it raises."""

    def __str__(self):
        raise ValueError("this value has no text")


def test_one_bad_request_never_fails_the_others_in_its_batch(tiny_model):
    from sentiment.serve.batcher import Batcher, BatchOptions

    clf = load_bundle(tiny_model, precision="float32")
    gate = threading.Semaphore(1)
    sizes: list[int] = []
    # One worker and a long wait for company: requests that come while the model is busy
    # all go into the worker's next batch.
    batcher = Batcher(clf, BatchOptions(max_batch_size=64, wait_s=1.0, workers=1), gate,
                      observe=lambda texts, waits: sizes.append(texts))
    requests = [REVIEWS[0:3], ["loved it", _Unreadable(), "awful"], REVIEWS[3:5], REVIEWS[5:9]]
    answers: dict[int, object] = {}

    def call(i):
        try:
            answers[i] = batcher.scores(requests[i])
        except Exception as exc:  # the bad request's own answer
            answers[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    gate.acquire()  # the model is busy
    threads[0].start()  # taken by the worker, which now waits for the model
    time.sleep(0.3)
    for t in threads[1:]:  # these three wait together for the worker's batch
        t.start()
    time.sleep(0.3)
    gate.release()
    for t in threads:
        t.join(60)
    batcher.close()
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "this value has no text"
    for i in (0, 2, 3):
        alone = clf.scores(requests[i])
        np.testing.assert_allclose(answers[i].probabilities, alone.probabilities, atol=1e-6)
        assert answers[i].known_words.tolist() == alone.known_words.tolist()
    # Requests 2 and 3 were scored each by itself: the batch they shared with the bad
    # request failed and was scored again one request at a time (shared, they'd be one of 6).
    assert sorted(sizes) == [2, 3, 4], sizes


def test_only_the_workers_run_the_model(tiny_model):
    # Callers' threads (dozens under load: the page's and the API's) only wait: a thread that
    # runs the model keeps memory of its own for as long as it lives.
    from sentiment.serve.batcher import Batcher, BatchOptions

    clf = load_bundle(tiny_model, precision="float32")
    ran_on: set[str] = set()
    clf.model.register_forward_hook(lambda *_: ran_on.add(threading.current_thread().name))
    batcher = Batcher(clf, BatchOptions(max_batch_size=4, workers=2))
    answers: dict[int, object] = {}
    _in_threads(12, lambda i: answers.__setitem__(i, batcher.scores(REVIEWS[i:i + 1 + i % 6])))
    batcher.close()
    workers_ran_on = set(ran_on)
    for i, scores in answers.items():
        np.testing.assert_allclose(scores.probabilities, clf.scores(REVIEWS[i:i + 1 + i % 6]).probabilities, atol=1e-6)
    assert len(answers) == 12 and workers_ran_on, workers_ran_on
    assert all(name.startswith("batcher-") for name in workers_ran_on), workers_ran_on


CHURN = """
import json, threading
from sentiment.serve.memory import release_free_memory

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:", 1)[1].split()[0]) / 1024

survivors = []

def churn():  # what batches leave behind: freed blocks between blocks still in use
    blocks = []
    for k in range(400):
        blocks.append(bytearray(60_000))
        survivors.append(bytearray(200))
    for block in blocks:
        block[::4096] = b"\\1" * len(block[::4096])  # pages written, so the process holds them
    blocks.clear()

before = rss()
threads = [threading.Thread(target=churn) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
held = rss()
done = release_free_memory()
print(json.dumps([done, before, held, rss()]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
def test_freed_memory_goes_back_to_the_system_once_idle():
    result = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    done, before, held, after = json.loads(result.stdout.splitlines()[-1])
    if not done:
        pytest.skip("this C library offers no malloc_trim (not glibc)")
    assert held - before > 20, (before, held)  # the churn left freed memory with the process
    assert after - before < (held - before) / 2, (before, held, after)
