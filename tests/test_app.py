"""The web page, through its API (gradio_client) and in a real headless Chromium.

Every test here talks to ``python serve.py`` started as a user starts it (conftest's
``server``: the page and the JSON API on one port)."""
import os
import shutil
import socket
from pathlib import Path

import pytest

from conftest import free_port, run_cli

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from sentiment import load_bundle  # noqa: E402

POSITIVE_REVIEW = "wonderful superb the film was loved and brilliant the plot moving"
NEGATIVE_REVIEW = "awful boring the film was hated and terrible the plot dull"


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, analytics_enabled=False, verbose=False)


@pytest.mark.slow
def test_predict_endpoint_returns_both_probabilities(client, tiny_model):
    result = client.predict(POSITIVE_REVIEW, api_name="/predict")
    assert result["label"] == "positive"
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    expected = load_bundle(tiny_model).predict_proba([POSITIVE_REVIEW])[0]
    assert confidences["negative"] == pytest.approx(expected[0], abs=1e-6)
    assert confidences["positive"] == pytest.approx(expected[1], abs=1e-6)
    assert client.predict(NEGATIVE_REVIEW, api_name="/predict")["label"] == "negative"


@pytest.mark.parametrize("text", ["", "   ", "zzzq qqqx"])
def test_nothing_to_judge_is_said_not_guessed(client, text):
    result = client.predict(text, api_name="/predict")
    assert result["label"] == "nothing to judge: no known words"
    assert not result.get("confidences")
    rows = client.predict(text, api_name="/compare")
    rows = rows["data"] if isinstance(rows, dict) else rows
    assert [(r[2], r[3]) for r in rows] == [("nothing to judge: no known words", None)] * 2


def test_explain_is_faithful(client, tiny_model):
    pieces, summary = client.predict(POSITIVE_REVIEW, api_name="/explain")
    assert "".join(p["token"] for p in pieces) == POSITIVE_REVIEW  # the whole text, highlighted in place
    assert "occlusion" in summary
    top = {p["token"] for p in pieces if p["class_or_confidence"] == "strong positive"}
    assert top and top <= set(POSITIVE_REVIEW.split())
    # Leaving out the words it called most positive must lower P(positive).
    clf = load_bundle(tiny_model)
    removed = " ".join(w for w in POSITIVE_REVIEW.split() if w not in top)
    before, after = clf.predict_proba([POSITIVE_REVIEW, removed])[:, 1]
    assert after < before - 0.05, (before, after, top)


def test_compare_lists_every_model(client):
    table = client.predict(POSITIVE_REVIEW, api_name="/compare")
    rows = table["data"] if isinstance(table, dict) else table
    assert [r[0] for r in rows] == ["tiny", "again"]
    assert {r[2] for r in rows} == {"positive"}


def test_overlong_text_gets_a_clear_message(client):
    with pytest.raises(Exception, match="limit is 5,000"):
        client.predict("a" * 6000, api_name="/predict")


def test_file_tab_scores_through_the_batch_scorer(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "reviews.txt"
    path.write_text(f"{POSITIVE_REVIEW}\n\n{NEGATIVE_REVIEW}\n")
    table, download, note = client.predict(handle_file(str(path)), api_name="/score_file")
    assert "rows read: 3, rows written: 3" in note
    rows = table["data"]
    assert [r[table["headers"].index("prediction")] for r in rows][::2] == ["positive", "negative"]
    assert Path(download).read_text().count("\n") == 4


def test_file_tab_shows_the_uploaded_name_and_caps_rows(client, server, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "my reviews.txt"
    path.write_text(f"{POSITIVE_REVIEW}\n" * 50)
    table, download, note = client.predict(handle_file(str(path)), api_name="/score_file")
    assert {r[table["headers"].index("source")] for r in table["data"]} == {"my reviews.txt"}
    assert Path(download).read_text().count("my reviews.txt") == 50
    path.write_text(f"{POSITIVE_REVIEW}\n" * 51)  # --max-rows 50 in conftest's server
    with pytest.raises(Exception, match="my reviews.txt: more than 50 rows; score at most 50 at a time here"):
        client.predict(handle_file(str(path)), api_name="/score_file")
    # A user's mistake is one line in the server's log, not a traceback.
    assert "Traceback" not in server.log.read_text()


def test_old_results_are_removed(tmp_path):
    from sentiment.serve.app import remove_older

    old, new = tmp_path / "a" / "old.csv", tmp_path / "b" / "new.csv"
    for path in (old, new):
        path.parent.mkdir()
        path.write_text("x")
    os.utime(old, (0, 0))
    remove_older(tmp_path, 600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.slow
def test_explain_keeps_server_memory_flat(server):
    """Every API call is a new Gradio session holding its values: the sessions kept are bounded."""
    import httpx

    def rss_mb() -> float:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024

    words = POSITIVE_REVIEW.split() + NEGATIVE_REVIEW.split()

    def explain(http, i):
        text = " ".join(words[(i + k) % len(words)] for k in range(800))[:4900] + f" {i}"
        event = http.post("gradio_api/call/explain", json={"data": [text]}).json()["event_id"]
        body = http.get(f"gradio_api/call/explain/{event}").text
        assert "event: complete" in body, body[:300]

    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i in range(150):  # past the 100 sessions kept
            explain(http, i)
        before = rss_mb()
        for i in range(150, 450):
            explain(http, i)
        after = rss_mb()
    assert after - before < 12, (before, after)  # measured: +4 MB bounded, +24 MB with 10,000 sessions


@pytest.mark.slow
def test_serve_refuses_a_broken_model_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run_cli("serve.py", "--model", tmp_path, "--port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}/config.json: format_version None is not supported " \
                                    "(this version of sentiment reads format_version 1)"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _open_page(p, url):
    chrome = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"])
    page = chrome.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                                 "blob:")) else None)
    page.goto(url)
    return chrome, page, outside


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (apt-get install chromium)")
def test_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        chrome, page, outside = _open_page(p, server.url)
        box = page.locator("#review textarea")
        box.press_sequentially(NEGATIVE_REVIEW)  # typed key by key, as a person would
        expect(page.locator("#label")).to_contain_text("negative", timeout=20_000)
        box.press("Control+a")
        box.press_sequentially(POSITIVE_REVIEW)
        expect(page.locator("#label")).to_contain_text("positive", timeout=20_000)
        expect(page.locator("#why")).to_contain_text("strong positive", timeout=20_000)
        expect(page.locator("#why")).to_contain_text("superb", timeout=20_000)
        expect(page.locator("#saw-notice")).to_contain_text("words read", timeout=20_000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'page.png'}")
        page.get_by_role("tab", name="Model card").click()
        expect(page.locator(".model-card").first).to_contain_text("Intended use", timeout=20_000)
        expect(page.locator(".model-card").first).to_contain_text("Limitations")
        chrome.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("how", ["paste", "fill", "example"])
def test_text_that_arrives_at_once_updates_the_page(server, how):
    """Paste, drop and autofill put the whole text in one input event; an example click sets it from code."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        chrome, page, outside = _open_page(p, server.url)
        box = page.locator("#review textarea")
        if how == "paste":
            box.click()
            page.keyboard.insert_text(NEGATIVE_REVIEW)  # what a paste delivers: one insertText input event
            expected = "negative"
        elif how == "fill":
            box.fill(POSITIVE_REVIEW)  # autofill and drop: the value set at once
            expected = "positive"
        else:
            page.get_by_text("One of the best films").first.click()
            expected = "positive"
        expect(page.locator("#label")).to_contain_text(expected, timeout=20_000)
        expect(page.locator("#why")).to_contain_text("strong", timeout=20_000)
        expect(page.locator("#saw-notice")).to_contain_text("words read", timeout=20_000)
        box.fill("")
        expect(page.locator("#label")).to_contain_text("nothing to judge", timeout=20_000)
        chrome.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"


@pytest.mark.slow
def test_serve_says_when_its_port_is_taken(tiny_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve.py", "--model", tiny_model, "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); " \
                                    "pass another --port"


def test_the_page_does_not_summarise_every_event(tiny_model):
    # Gradio's queue would rebuild a pandas summary of up to 10,000 recorded events after
    # each event (its monitoring page): more CPU than the model on a busy page.
    from sentiment.serve.app import ANALYTICS_EVENTS, build_app

    queue = build_app({"tiny": load_bundle(tiny_model)})._queue
    assert queue.ANALYTICS_MAX_EVENTS == ANALYTICS_EVENTS
    record = {"time": 0.0, "status": "success", "process_time": 0.01, "function": "predict", "session_hash": "s"}
    queue.events_recorded = ANALYTICS_EVENTS - 1  # not yet: the cached (empty) summary comes back
    assert queue.compute_analytics_summary([record]) == {"functions": {}}
    queue.events_recorded = ANALYTICS_EVENTS  # now it is made, once
    assert "predict" in queue.compute_analytics_summary([record])["functions"]
