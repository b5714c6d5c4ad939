"""The HTTP server: the Gradio page and a plain JSON API on one port, in one process.

    POST /api/v1/predict   {"texts": [...], "model": optional} -> one result per text
    GET  /api/v1/models    what is loaded: kinds, sizes, metrics, calibration
    GET  /healthz          {"status": "ok"} once the models are loaded
    GET  /metrics          Prometheus text: requests, errors, latency, model versions
    GET  /docs             OpenAPI docs (/openapi.json is the schema)
    /                      the page (``app.build_app``)

The models are loaded once and shared by page and API, and so are one batcher per model
(``batcher``: texts of concurrent requests scored together, a bounded queue) and one gate
that bounds the model computations running at once (``--concurrency``). Every request body is capped
(``--max-upload-mb``) before it is read, page uploads included, and clients that send
slowly or too much are cut off (``http_limits``).
"""
import signal
import threading
import time
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException

from .app import ServeConfig, build_app, make_batchers
from .batcher import Busy
from ..errors import SentimentError
from .http_limits import Guard, server_config
from .memory import limit_pools
from ..predict import Classifier

API = "/api/v1"
# Each endpoint's methods; a GET also answers HEAD (the same headers, no body).
ROUTES = {f"{API}/predict": ("POST",), f"{API}/models": ("GET", "HEAD"), "/healthz": ("GET", "HEAD"),
          "/metrics": ("GET", "HEAD")}
EVERY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Gradio keeps each session's component values, and every API call is a new session:
# the default capacity of 10,000 sessions let memory grow by gigabytes.
SESSION_CAPACITY = 100
# A multipart upload carries some bytes of framing beside the file itself.
BODY_SLACK = 64 * 1024
LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

class ApiError(Exception):
    """A request the API refuses: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def model_version(clf: Classifier) -> str:
    """A short name for the exact weights: the start of their sha256."""
    return str((clf.config.get("weights") or {}).get("sha256") or "unknown")[:12]


def model_summary(name: str, clf: Classifier, default: bool) -> dict:
    c = clf.config
    metrics = {split: {k: v for k, v in m.items() if k != "confusion_matrix"}
               for split, m in (c.get("metrics") or {}).items() if isinstance(m, dict)}
    # No path: where the server keeps its files is none of a client's business.
    return {"name": name, "default": default, "kind": c["model"]["kind"],
            "version": model_version(clf), "vocab_size": c["text"]["vocab_size"], "max_len": c["text"]["max_len"],
            "truncate": c["text"]["truncate"], "embedding_dim": c["model"]["embedding_dim"],
            "hidden_size": c["model"]["hidden_size"], "num_layers": c["model"]["num_layers"],
            "labels": list(clf.classes_), "metrics": metrics, "calibration": c.get("calibration"),
            "trained": (c.get("trained") or {}).get("date")}


class _Metrics:
    """Prometheus metrics of one server (a registry of its own, so servers in one process do not mix)."""

    def __init__(self, classifiers: dict[str, Classifier]):
        import prometheus_client as prom

        self.prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("sentiment_requests", "HTTP requests answered, by endpoint and status",
                                     ["endpoint", "status"], registry=self.registry)
        self.errors = prom.Counter("sentiment_request_errors", "requests answered with a 4xx or 5xx status",
                                   ["endpoint", "status"], registry=self.registry)
        self.latency = prom.Histogram("sentiment_request_duration_seconds", "time from request to answer",
                                      ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.texts = prom.Counter("sentiment_texts", "texts scored through the JSON API", ["model"],
                                  registry=self.registry)
        self.batch_size = prom.Histogram("sentiment_batch_size", "texts per forward pass of the model",
                                         ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_wait = prom.Histogram("sentiment_batch_wait_seconds", "time a request's texts waited for "
                                         "the model", ["model"], buckets=WAIT_BUCKETS, registry=self.registry)
        self.queue_depth = prom.Gauge("sentiment_queue_depth", "texts waiting for the model", ["model"],
                                      registry=self.registry)
        info = prom.Info("sentiment_model", "the loaded models", ["name"], registry=self.registry)
        for name, clf in classifiers.items():
            info.labels(name=name).info({"kind": clf.config["model"]["kind"], "version": model_version(clf)})

    def observe(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ROUTES or path in ("/docs", "/openapi.json") else (
            "api-unknown" if path.startswith(API) else "page")
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch_observer(self, name: str):
        """What a model's batcher reports after each batch, recorded under ``name``."""
        size, wait = self.batch_size.labels(name), self.batch_wait.labels(name)

        def observe(texts: int, waits: list[float]) -> None:
            size.observe(texts)
            for seconds in waits:
                wait.observe(seconds)
        return observe

    def watch_queues(self, batchers: dict) -> None:
        for name, batcher in batchers.items():
            self.queue_depth.labels(name).set_function(lambda b=batcher: b.waiting)

    def text(self) -> bytes:
        return self.prom.generate_latest(self.registry)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["A moving, beautifully acted film.", "Dull and far too long."]}]})
    texts: list[StrictStr] = Field(description="the reviews (at most --max-batch, 128 by default, of at most "
                                               "--max-chars characters each), scored as one batch")
    model: StrictStr | None = Field(None, description=f"a loaded model's name (default: the first); "
                                                      f"GET {API}/models lists them")


class Result(BaseModel):
    # The classes are the model's own (GET /models lists each model's labels), so no list is fixed here.
    label: str | None = Field(
        description="the verdict, one of the model's labels; null when there is nothing to judge")
    score: float | None = Field(description="the probability of label")
    probabilities: dict[str, float] | None = Field(
        description="every label of the model with its probability; null when there is nothing to judge")
    p_positive: float | None = Field(None, description="the probability that the review is positive; only from "
                                                       "a model whose labels are negative and positive")
    known_words: int = Field(description="words of the model's vocabulary among those it read")
    note: str | None = Field(description="why there is no verdict, when there is none")


class PredictResponse(BaseModel):
    model: str = Field(description="the model that answered")
    results: list[Result] = Field(description="one per text, in the order of texts")


def _problem(error: dict) -> dict:
    """One validation error as ``{"where", "problem"}``, in the words of this API."""
    loc = error.get("loc", ())
    if error.get("type") == "json_invalid":
        position = loc[-1] if loc and isinstance(loc[-1], int) else "?"
        return {"where": "body", "problem": f"not valid JSON (at character {position}: "
                                            f"{(error.get('ctx') or {}).get('error', 'parse error')})"}
    if tuple(loc) == ("body",):
        return {"where": "body", "problem": 'must be a JSON object such as {"texts": ["A moving film."]}'}
    return {"where": _where(loc), "problem": error.get("msg", "invalid")}


def _where(loc) -> str:
    """``("body", "texts", 2)`` -> ``texts[2]``: the place in the request body."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _body_problem(exc: HTTPException) -> str:
    """What FastAPI's "error parsing the body" was, from the exception behind it."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"body: not UTF-8 (byte {cause.start}: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply"
    return f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail)


def _add_error_answers(api: FastAPI) -> None:
    """Every error of the API as ``{"error": ...}``, whoever raised it."""

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        detail = [_problem(e) for e in exc.errors()]
        problems = [f"{d['where']}: {d['problem']}" for d in detail]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        return JSONResponse({"error": "; ".join(problems[:5]) + more, "detail": detail[:100]}, status_code=422)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": _body_problem(exc)}, status_code=exc.status_code, headers=exc.headers)

    @api.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        # Starlette logs the traceback after this answer.
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)


def _add_method_answers(api: FastAPI) -> None:
    """OPTIONS, a wrong method, and an unknown path under the API, answered in JSON."""

    def other_method(request: Request):
        path = request.url.path
        allow = ", ".join((*ROUTES[path], "OPTIONS"))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        return JSONResponse({"error": f"{path} takes {' or '.join(ROUTES[path])}, not {request.method}"},
                            status_code=405, headers={"Allow": allow})

    for path, methods in ROUTES.items():
        api.add_api_route(path, other_method, methods=[m for m in EVERY_METHOD if m not in methods],
                          include_in_schema=False)

    @api.api_route(API + "/{rest:path}", methods=list(EVERY_METHOD), include_in_schema=False)
    def unknown(rest: str):
        return JSONResponse({"error": f"no endpoint {API}/{rest}; the API has {', '.join(ROUTES)}"},
                            status_code=404)


def _add_routes(api: FastAPI, classifiers: dict[str, Classifier], config: ServeConfig, scorers: dict,
                metrics: _Metrics):
    names = list(classifiers)

    # Unset fields stay out: p_positive is only in answers of negative/positive models.
    @api.post(f"{API}/predict", response_model=PredictResponse, response_model_exclude_unset=True,
              responses={413: {"description": "too many texts, or a text or body too long"},
                         404: {"description": "no such model"}, 422: {"description": "malformed request"},
                         503: {"description": "busy: too many texts waiting, or no answer in time; "
                                              "try again after Retry-After seconds"}})
    def predict(request: PredictRequest) -> dict:
        """A label and every label's probability for each text, in the order given, as one batch."""
        name = request.model or names[0]
        clf = classifiers.get(name)
        if clf is None:
            raise ApiError(404, f"model: no model {name!r} is loaded (loaded: {', '.join(names)})")
        if len(request.texts) > config.max_batch:
            raise ApiError(413, f"texts: {len(request.texts):,} texts; the limit is {config.max_batch:,} "
                                "per request (--max-batch)")
        for i, text in enumerate(request.texts):
            if len(text) > config.max_chars:
                raise ApiError(413, f"texts[{i}]: {len(text):,} characters; the limit is {config.max_chars:,} "
                                    "(--max-chars)")
        try:
            results = scorers[name].scores(request.texts).results()
        except Busy as exc:
            raise ApiError(503, exc.message, {"Retry-After": str(exc.retry_after_s)}) from None
        metrics.texts.labels(name).inc(len(results))
        return {"model": name, "results": results}

    @api.get(f"{API}/models")
    def models() -> dict:
        """The loaded models: the first is the default of predict and of the page."""
        return {"default": names[0],
                "models": [model_summary(n, c, i == 0) for i, (n, c) in enumerate(classifiers.items())]}

    @api.get("/healthz")
    def healthz() -> dict:
        """Ready to answer: every model is loaded."""
        return {"status": "ok", "models": names}

    @api.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.text(), media_type=metrics.prom.CONTENT_TYPE_LATEST)

    # HEAD: the same answer, whose body the server leaves out (kept out of the schema,
    # where a second operation of one function would be a duplicate).
    for path, endpoint in ((f"{API}/models", models), ("/healthz", healthz), ("/metrics", prometheus)):
        api.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)


def cors_origins(value: str | None) -> list[str]:
    """``--cors-origin`` as a list: web pages of these origins may call the API from a browser."""
    origins = [o.strip() for o in (value or "").split(",") if o.strip()]
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
                              or parts.query or parts.fragment or parts.username):
            raise SentimentError(f"--cors-origin: {origin!r} is not an origin such as https://example.org or "
                                 "http://localhost:3000 (scheme, host and port only; * for any)")
    return origins


def build_api(classifiers: dict[str, Classifier], config: ServeConfig, scorers: dict, metrics: "_Metrics",
              description: str) -> FastAPI:
    """The JSON API's routes and error answers; ``scorers[name].scores(texts)`` scores (a batcher,
    or the Ray engine's handle on its replicas), raising ``Busy`` when it cannot take more."""
    api = FastAPI(title="sentiment", version=_version(), description=description)
    _add_error_answers(api)
    _add_routes(api, classifiers, config, scorers, metrics)
    _add_method_answers(api)
    return api


def guard(api: FastAPI, config: ServeConfig, metrics: "_Metrics") -> FastAPI:
    """The browser origins and the limits on what a client may send, around ``api`` and all it holds."""
    from starlette.middleware.cors import CORSMiddleware

    # Only the origins the user names may read answers from a browser. Gradio's own rule
    # (any localhost page when serving on 127.0.0.1, any page at all on other addresses)
    # steps aside when the application has this middleware.
    api.add_middleware(CORSMiddleware, allow_origins=cors_origins(config.cors_origin),
                       allow_methods=list(EVERY_METHOD), allow_headers=["content-type"])
    limit = config.max_upload_mb * 1024 * 1024 + BODY_SLACK
    api.add_middleware(Guard, limit=limit, readers=config.concurrency, observe=metrics.observe,
                       cap=f"request body over the limit of {limit - BODY_SLACK:,} bytes (--max-upload-mb)",
                       json_errors=lambda path: path in ROUTES or path.startswith(API + "/"))
    return api


def build_server(classifiers: dict[str, Classifier], config: ServeConfig | None = None):
    """The FastAPI application: JSON API routes, then the page mounted at ``/``."""
    import gradio as gr

    config = config or ServeConfig()
    gate = threading.BoundedSemaphore(config.concurrency)
    metrics = _Metrics(classifiers)
    batchers = make_batchers(classifiers, config, gate, metrics.batch_observer)
    metrics.watch_queues(batchers)
    api = build_api(classifiers, config, batchers, metrics,
                    "Sentiment of English movie reviews with recurrent networks. The web page is at /.")
    demo = build_app(classifiers, config, gate, batchers)
    demo.state_session_capacity = SESSION_CAPACITY
    gr.mount_gradio_app(api, demo, path="/", server_name=config.host, server_port=config.port, ssr_mode=False,
                        max_file_size=f"{config.max_upload_mb}mb", footer_links=["api", "settings"])
    return guard(api, config, metrics)


def _version() -> str:
    from .. import __version__

    return __version__


def load_models(paths: list[str], precision: str = "float32") -> dict[str, Classifier]:
    from ..bundle import default_model_dir, load_bundle, model_names

    paths = paths or [str(default_model_dir())]
    return {name: load_bundle(path, precision=precision) for name, path in zip(model_names(paths), paths)}


def _check_address(host: str, port: int) -> None:
    """Fail before the models load when the server could not listen on ``host:port``."""
    import errno
    import socket

    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise SentimentError(f"--host {host}: not an IP address or a known host name "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server itself binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise SentimentError(f"--host {host}: not an address of this machine ({exc.strerror}); "
                                     "127.0.0.1 serves this machine only, 0.0.0.0 every network") from None
            raise SentimentError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None


def _share(server, config: ServeConfig) -> None:
    """Open a gradio.live link once the server listens (gradio's own tunnel)."""
    import secrets

    from gradio import networking

    while not server.started:
        time.sleep(0.1)
    try:
        url = networking.setup_tunnel(config.host, config.port, secrets.token_urlsafe(32), None, None)
        print(f"public link: {url}", flush=True)
    except Exception as exc:  # the page stays up locally; the link is an extra
        print(f"no public link: {exc}", flush=True)


def _stop_on_signals(*signums: int) -> None:
    """SIGTERM (a service manager's stop) and, once the server runs, Ctrl-C end it with exit status 0.

    uvicorn stops gracefully on either signal (no new connections; requests under way,
    those waiting for a batch included, are answered, for at most ``GRACE_S``) and then
    raises the signal again; SIGTERM's default action would then kill the process before
    its exit handlers remove the page's temporary files, and SIGINT's would end it with a
    traceback. Raising SystemExit instead runs them.
    """
    def stop(signum, frame):
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():
        for signum in signums:
            signal.signal(signum, stop)


def launch(config: ServeConfig) -> None:
    import gc

    import torch
    import uvicorn

    _stop_on_signals(signal.SIGTERM)
    cors_origins(config.cors_origin)  # a bad value fails before the models load
    _check_address(config.host, config.port)
    # Requests run on worker threads. Two-thread torch ops started from several threads
    # keep more OpenMP threads than there are cores, and then each of the RNN's per-step
    # parallel regions waits to wake a sleeping thread, several times the work itself
    # (docs/serving.md). One thread per computation, --concurrency at once, instead.
    torch.set_num_threads(1)
    limit_pools()
    classifiers = load_models(config.models, config.precision)
    for clf in classifiers.values():
        clf.warm_up()
    api = build_server(classifiers, config)
    # What is loaded now lives as long as the server: keep it out of the garbage
    # collector's full passes, which otherwise pause every request now and then.
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(server_config(api, config.host, config.port))
    if config.share:
        threading.Thread(target=_share, args=(server, config), daemon=True).start()
    print(f"serving {', '.join(f'{n} ({c.path})' for n, c in classifiers.items())} on "
          f"http://{config.host}:{config.port}/ (JSON API at {API}, docs at /docs; Ctrl-C to stop"
          f"{'' if config.share else '; --share for a public link'})", flush=True)
    # Ctrl-C before this point (while the models load) stays "interrupted", status 130.
    _stop_on_signals(signal.SIGINT)
    server.run()
