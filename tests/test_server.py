"""The JSON API of ``python serve.py`` (same port and process as the page), over real HTTP."""
import json

import httpx
import pytest

from sentiment import load_bundle

POSITIVE_REVIEW = "wonderful superb the film was loved and brilliant the plot moving"
NEGATIVE_REVIEW = "awful boring the film was hated and terrible the plot dull"
TEXTS = [POSITIVE_REVIEW, NEGATIVE_REVIEW, "loved it", "dull and boring", "The film.", "wonderful",
         "hated the actor, loved the music"]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def predict(http, body, **kw):
    return http.post("api/v1/predict", json=body, **kw)


def test_labels_and_probabilities_match_the_classifier(http, tiny_model):
    response = predict(http, {"texts": [POSITIVE_REVIEW, NEGATIVE_REVIEW]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny"
    expected = load_bundle(tiny_model).predict_proba([POSITIVE_REVIEW, NEGATIVE_REVIEW])[:, 1]
    positive, negative = body["results"]
    assert positive["label"] == "positive" and negative["label"] == "negative"
    assert [positive["p_positive"], negative["p_positive"]] == pytest.approx(expected, abs=1e-6)
    # score is the probability of the label given, as in a transformers pipeline.
    assert positive["score"] == pytest.approx(expected[0], abs=1e-6)
    assert negative["score"] == pytest.approx(1 - expected[1], abs=1e-6)
    assert positive["known_words"] == len(POSITIVE_REVIEW.split()) and positive["note"] is None


def test_a_batch_equals_one_text_at_a_time(http):
    batch = predict(http, {"texts": TEXTS}).json()["results"]
    one_by_one = [predict(http, {"texts": [t]}).json()["results"][0] for t in TEXTS]
    assert [r["label"] for r in batch] == [r["label"] for r in one_by_one]
    assert [r["p_positive"] for r in batch] == pytest.approx([r["p_positive"] for r in one_by_one], abs=1e-5)


def test_the_model_can_be_chosen(http):
    body = predict(http, {"texts": [POSITIVE_REVIEW], "model": "again"}).json()
    assert body["model"] == "again" and body["results"][0]["label"] == "positive"


@pytest.mark.parametrize("text", ["", "  ", "zzzq qqqx"])
def test_nothing_to_judge_gets_no_verdict(http, text):
    [result] = predict(http, {"texts": [text]}).json()["results"]
    assert result == {"label": None, "score": None, "p_positive": None, "probabilities": None, "known_words": 0,
                      "note": "nothing to judge: no known words"}


def _status_and_error(response):
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.status_code, response.json()["error"]


BAD_BODIES = [
    (b'{"texts": [', 422, 'body: not valid JSON (at character 11'),
    (b'["a", "b"]', 422, 'body: must be a JSON object such as {"texts": ["A moving film."]}'),
    (b'{}', 422, "texts: Field required"),
    (b'{"texts": "one review"}', 422, "texts: Input should be a valid list"),
    (b'{"texts": ["ok", 3, null]}', 422, "texts[1]: Input should be a valid string; "
                                         "texts[2]: Input should be a valid string"),
    (b'{"texts": ["ok"], "lang": "en"}', 422, "lang: Extra inputs are not permitted"),
    (b'{"texts": ["ok"], "model": 1}', 422, "model: Input should be a valid string"),
    (b'{"texts": ["ok"], "model": "nope"}', 404, "model: no model 'nope' is loaded (loaded: tiny, again)"),
    (json.dumps({"texts": ["ok"] * 9}).encode(), 413, "texts: 9 texts; the limit is 8 per request (--max-batch)"),
    (json.dumps({"texts": ["ok", "a" * 5001]}).encode(), 413,
     "texts[1]: 5,001 characters; the limit is 5,000 (--max-chars)"),
]


@pytest.mark.parametrize("body,status,error", BAD_BODIES, ids=[e for _, _, e in BAD_BODIES])
def test_bad_requests_get_json_that_says_what_was_wrong(http, body, status, error):
    response = http.post("api/v1/predict", content=body, headers={"content-type": "application/json"})
    got_status, got_error = _status_and_error(response)
    assert got_status == status and got_error.startswith(error), response.text


def test_bodies_over_the_limit_are_refused_before_they_are_read(http):
    limit = 1024 * 1024  # --max-upload-mb 1
    big = json.dumps({"texts": ["a " * (limit // 2 + 65536)]}).encode()  # past the 64 KB left for framing
    assert _status_and_error(http.post("api/v1/predict", content=big, headers={"content-type": "application/json"})) \
        == (413, "request body over the limit of 1,048,576 bytes (--max-upload-mb)")

    def chunks():  # no content-length: counted as it arrives
        yield b'{"texts": ["'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"]}'

    response = http.post("api/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert _status_and_error(response)[0] == 413
    # The page's own API has the same cap.
    response = http.post("gradio_api/call/predict", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_wrong_method_and_unknown_endpoint(http):
    response = http.get("api/v1/predict")
    assert _status_and_error(response) == (405, "/api/v1/predict takes POST, not GET")
    assert response.headers["allow"] == "POST, OPTIONS"
    assert _status_and_error(http.get("api/v1/predictions"))[0] == 404


def test_models_health_and_docs(http, tiny_model):
    models = http.get("api/v1/models").json()
    assert models["default"] == "tiny"
    assert [m["name"] for m in models["models"]] == ["tiny", "again"]
    tiny = models["models"][0]
    config = load_bundle(tiny_model).config
    assert tiny["kind"] == "lstm" and tiny["vocab_size"] == config["text"]["vocab_size"]
    assert tiny["version"] == config["weights"]["sha256"][:12]
    assert tiny["metrics"]["test"]["accuracy"] == config["metrics"]["test"]["accuracy"]
    assert "calibration" in tiny
    assert http.get("healthz").json() == {"status": "ok", "models": ["tiny", "again"]}
    schema = http.get("openapi.json").json()
    assert set(schema["paths"]) >= {"/api/v1/predict", "/api/v1/models", "/healthz"}
    assert http.get("docs").status_code == 200


def _metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_with_requests(http):
    before = http.get("metrics").text
    for _ in range(3):
        predict(http, {"texts": [POSITIVE_REVIEW, NEGATIVE_REVIEW]})
    predict(http, {"texts": [1]})
    after = http.get("metrics").text
    assert http.get("metrics").headers["content-type"].startswith("text/plain")

    def moved(name, **labels):
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert moved("sentiment_requests_total", endpoint="/api/v1/predict", status="200") == 3
    assert moved("sentiment_requests_total", endpoint="/api/v1/predict", status="422") == 1
    assert moved("sentiment_request_errors_total", endpoint="/api/v1/predict", status="422") == 1
    assert moved("sentiment_texts_total", model="tiny") == 6
    assert moved("sentiment_request_duration_seconds_count", endpoint="/api/v1/predict") == 4
    assert 'sentiment_model_info{kind="lstm",name="tiny"' in after


def test_the_classifier_answers_in_the_same_shape(tiny_model):
    clf = load_bundle(tiny_model)
    results = clf([POSITIVE_REVIEW, "", NEGATIVE_REVIEW])
    assert [r["label"] for r in results] == ["positive", None, "negative"]
    assert results[1]["note"] == "nothing to judge: no known words"
    p = clf.predict_proba([POSITIVE_REVIEW, NEGATIVE_REVIEW])[:, 1]
    assert [results[0]["p_positive"], results[2]["p_positive"]] == pytest.approx(p, abs=1e-9)
    assert results[2]["score"] == pytest.approx(1 - p[1], abs=1e-9)
    assert clf(POSITIVE_REVIEW) == results[:1]  # one string, as a pipeline takes it
