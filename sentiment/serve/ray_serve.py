"""``sentiment serve --engine ray``: the JSON API as a Ray Serve application.

Two deployments per application: the ingress (the same FastAPI routes, answers and
errors as the single-process server, built by ``server.build_api``), and one deployment
per model with ``--replicas`` replicas, each holding the model and scoring through the
same batcher as the single-process server (:mod:`.batcher`: batches counted in texts, up
to ``--max-batch-size``; a lone request is scored at once, and ``--batch-wait-ms`` is
waited only while the model is busy). Ray Serve's own ``@serve.batch`` was not kept: it
waits its timeout even for a lone request, and it closes a batch on that timer while the
one before is still computing, so under load its batches stay small. Each answer also
carries the batches its replica ran since its last answer, for the ingress's
``/metrics``. The ingress cuts a request into pieces of at most
``--max-batch-size`` texts, refuses more than ``--max-queue`` texts in flight per model
(503, as the single-process server does), and sends a piece again, to another replica,
when the one computing it dies. The page is not served here: it is the single-process
server's.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import SentimentError, ray_join_failure
from ..predict import Scores
from .app import ServeConfig, batch_options
from .batcher import Batcher, BatchObserver, BatchOptions, Busy

APP = "sentiment"
RAY_MISSING = "--engine ray needs Ray Serve, an optional extra: pip install -e \".[ray]\""
# A piece whose replica died is sent again this many times (the deployment starts a
# new replica meanwhile) before the request fails.
RETRIES = 3
# Requests each ingress replica takes at once (Ray Serve's default is 5): the rest of the
# bounds are the API's own (--max-queue, the body limits).
INGRESS_ONGOING = 256
# How long replicas get to answer what they hold when the application stops.
GRACE_S = 5


def _serve():
    try:
        from ray import serve
    except ImportError:
        raise SentimentError(RAY_MISSING) from None
    return serve


class RemoteModel:
    """One model's replicas as the API sees them: ``scores(texts)``, as a local batcher offers."""

    def __init__(self, handle, config: ServeConfig, classes: tuple[str, ...], observe: BatchObserver | None = None):
        self.handle, self.config, self.classes, self.observe = handle, config, classes, observe
        self.lock = threading.Lock()
        self.waiting = 0  # texts sent and not yet answered

    def scores(self, texts: list[str]) -> Scores:
        size, limit = self.config.max_batch_size, self.config.max_queue
        with self.lock:
            if self.waiting + len(texts) > limit:
                raise Busy(f"the server is busy: {self.waiting:,} texts are waiting and the queue takes "
                           f"{limit:,} (--max-queue); try again in a moment")
            self.waiting += len(texts)
        try:
            deadline = time.monotonic() + self.config.request_timeout_s
            pieces = [self._scores(self._piece(texts[i:i + size], deadline)) for i in range(0, len(texts), size)]
        finally:
            with self.lock:
                self.waiting -= len(texts)
        return Scores.joined(pieces) if pieces else Scores(np.zeros((0, len(self.classes))),
                                                          np.zeros(0, dtype=np.int64), self.classes)

    def _scores(self, answer) -> Scores:
        """A replica's answer as Scores; the batches it reports go to ``observe``."""
        probabilities, known_words, batches = answer
        if self.observe is not None:
            for texts, waits in batches:
                self.observe(texts, waits)
        return Scores(np.array(probabilities, dtype=np.float64).reshape(len(known_words), len(self.classes)),
                      np.array(known_words, dtype=np.int64), self.classes)

    def _piece(self, texts: list[str], deadline: float):
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        for attempt in range(RETRIES + 1):
            response = self.handle.remote(texts)
            try:
                return response.result(timeout_s=max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                response.cancel()
                raise Busy(f"the server is busy: no answer within {self.config.request_timeout_s:g} s "
                           "(--request-timeout-s); try again in a moment") from None
            except BackPressureError:
                raise Busy("the server is busy: every replica's queue is full; try again in a moment") from None
            except (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError):
                if attempt == RETRIES or time.monotonic() > deadline:
                    raise


def _model_deployment(serve):
    @serve.deployment(graceful_shutdown_timeout_s=GRACE_S)
    class Model:
        def __init__(self, path: str, precision: str, options: BatchOptions, ongoing: int):
            from concurrent.futures import ThreadPoolExecutor

            import torch

            from ..bundle import load_bundle

            torch.set_num_threads(1)  # one core per replica, as each server computation (docs/serving.md)
            self.classifier = load_bundle(path, precision=precision)
            self.classifier.warm_up()
            self.lock = threading.Lock()
            self.observed: list[tuple[int, list[float]]] = []  # batches not yet reported to the ingress
            self.batcher = Batcher(self.classifier, options, observe=self._observe)
            # A thread per request the replica takes at once, each waiting on the batcher.
            self.pool = ThreadPoolExecutor(max_workers=ongoing, thread_name_prefix="request")

        def _observe(self, texts: int, waits: list[float]) -> None:
            with self.lock:
                self.observed.append((texts, waits))

        async def __call__(self, texts: list[str]):
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(self.pool, self.batcher.scores, texts)
            with self.lock:
                observed, self.observed = self.observed, []
            # Plain lists: what crosses Ray between nodes.
            return scores.probabilities.tolist(), scores.known_words.tolist(), observed

    return Model


def build_ingress_app(config: ServeConfig, paths: list[str], handles: list):
    """The ingress replica's FastAPI application, calling the models' replicas through ``handles``."""
    from .server import _Metrics, build_api, guard, load_models

    classifiers = load_models(paths, "float32")  # for /api/v1/models; scoring is the replicas'
    metrics = _Metrics(classifiers)
    models = {name: RemoteModel(handle, config, classifiers[name].labels, metrics.batch_observer(name))
              for name, handle in zip(classifiers, handles)}
    for name, model in models.items():
        metrics.queue_depth.labels(name).set_function(lambda m=model: m.waiting)
    api = build_api(classifiers, config, models, metrics,
                    "Sentiment of English movie reviews with recurrent networks, on Ray Serve.")
    return guard(api, config, metrics)


class _Ingress:
    """The ingress replica: Ray Serve hands it the models' handles, and asks it for its application."""

    def __init__(self, config: ServeConfig, paths: list[str], *handles):
        self.config, self.paths, self.handles = config, paths, list(handles)

    def __serve_build_asgi_app__(self):
        return build_ingress_app(self.config, self.paths, self.handles)


def application(config: ServeConfig, paths: list[str]):
    """The Ray Serve application: the ingress and one deployment per model."""
    serve = _serve()
    model = _model_deployment(serve)
    ingress = serve.deployment(serve.ingress()(_Ingress), name="api", max_ongoing_requests=INGRESS_ONGOING,
                               ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=GRACE_S)
    # Each replica takes as many pieces at once as make up two batches: one computing, one gathering.
    # The ingress bounds what waits (--max-queue) and when a caller gives up (--request-timeout-s);
    # a replica's own bounds only back those up.
    ongoing = 2 * config.max_batch_size
    options = replace(batch_options(config), max_queue=ongoing * config.max_batch_size,
                      timeout_s=config.request_timeout_s + GRACE_S, workers=1)
    bound = [model.options(name=f"model-{i}", num_replicas=config.replicas, max_ongoing_requests=ongoing,
                           ray_actor_options={"num_cpus": 1}).bind(path, config.precision, options, ongoing)
             for i, path in enumerate(paths)]
    return ingress.bind(config, paths, *bound)


def _connect(config: ServeConfig, models: int):
    import ray

    kwargs = {"log_to_driver": False, "configure_logging": False}
    try:
        if config.address:
            ray.init(address=config.address, **kwargs)
        else:
            # Each replica reserves one CPU: on a machine of fewer cores than replicas, the
            # local cluster says it has enough, and the replicas share the cores.
            # "local": a new cluster of this process, never one that `ray start` left running here.
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, config.replicas * models), include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ray_join_failure(config.address, exc) from None
    return ray


def serve_on_ray(config: ServeConfig) -> None:
    """Run the application until SIGTERM or Ctrl-C, then stop it gracefully (exit status 0)."""
    from .server import API, _check_address, cors_origins, load_models

    serve = _serve()
    cors_origins(config.cors_origin)  # a bad value fails before the models load
    _check_address(config.host, config.port)
    paths = [str(Path(p).resolve()) for p in config.models] or None
    classifiers = load_models(paths or [], config.precision)  # a missing or broken model fails here, in one line
    paths = paths or [str(Path(c.path).resolve()) for c in classifiers.values()]
    ray = _connect(config, len(paths))
    # After ray.init, which installs a SIGTERM handler of its own that aborts the process.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(application(config, paths), name=APP, route_prefix="/")
        print(f"serving {', '.join(classifiers)} on Ray Serve ({config.replicas} replica(s) per model) at "
              f"http://{config.host}:{config.port}/ (JSON API at {API}, docs at /docs; Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        # Replicas answer what they hold (for GRACE_S at most), then go.
        if config.address:
            serve.delete(APP)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()
