"""`berta serve`: an HTTP server for a model directory, on the routes existing clients already speak.

    berta serve --model runs/minilm --host 127.0.0.1 --port 8000
    curl -s localhost:8000/embed -H 'content-type: application/json' -d '{"inputs": ["a cat", "a dog"]}'

Routes: text-embeddings-inference's `POST /embed`, `/predict`, `/tokenize`; OpenAI's `POST /v1/embeddings`;
berta's `POST /tag`, `/answer`, `/fill-mask`; `GET /health`, `/info`, `/metrics` (Prometheus text) and the
OpenAPI docs at `/docs`. A route the model's task cannot serve answers 400 naming the task.

Dynamic batching: handlers validate and tokenize a request, then queue its inputs; one inference thread (off
the event loop) takes the waiting inputs of the same kind, up to `--max-batch-size` inputs and
`--max-batch-tokens` tokens, after waiting at most `--max-wait-ms` for more to arrive, and runs them as one
length-sorted, padding-free batch. So concurrent clients share model calls instead of queueing one by one.
A client that disconnects (or times out) is dropped from the queue.

Every error is a 4xx JSON body `{"error": "...", "error_type": "..."}`: validation (422), body or batch too
large (413), queue full (429, at once), unauthorised (401), a route the model does not serve (400). SIGTERM
stops accepting connections and finishes the requests in flight. The server holds no state between requests,
so it scales by running more processes (`--workers N`, or more machines) behind any load balancer.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from berta.inference.pipeline import RuntimeOptions

log = logging.getLogger(__name__)

# `--warm-up` stops here: above it a batch's own compute dwarfs the few ms a new kernel costs.
WARM_UP_ROWS = 4096

SETTINGS_ENVIRONMENT = "BERTA_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
API_KEY_ENVIRONMENT = "BERTA_API_KEY"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass
class ServeSettings(RuntimeOptions):
    """Settings of `berta serve`."""

    model: str = field(metadata={"help": "model directory (config.json, weights and tokenizer)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"min": 0, "max": 65535, "help": "TCP port"})
    max_batch_tokens: int = field(default=16384, metadata={"min": 1, "help": "most tokens in one model batch"})
    max_batch_size: int = field(default=64, metadata={"min": 1, "help": "most inputs in one model batch"})
    max_wait_ms: float = field(default=2.0, metadata={"min": 0,
                                                      "help": "a batch takes requests while each comes within this "
                                                              "of the last (at most 8x this in all; 0: no wait)"})
    max_client_batch_size: int = field(default=64, metadata={"min": 1, "help": "most inputs in one request (else 413)"})
    max_input_chars: int = field(default=20_000, metadata={"min": 1,
                                                           "help": "most characters per input (else 413)"})
    max_body_bytes: int = field(default=2_000_000, metadata={"min": 1,
                                                             "help": "largest request body in bytes (else 413)"})
    max_queue: int = field(default=1024, metadata={"min": 1, "help": "most inputs waiting for the model (else 429)"})
    request_timeout: float = field(default=30.0, metadata={"above": 0,
                                                           "help": "seconds a request may wait for its result"})
    api_key: str | None = field(default=None, metadata={"help": "require 'Authorization: Bearer KEY' (not on "
                                                                 "/health); or set $BERTA_API_KEY, which ps "
                                                                 "does not show"})
    workers: int = field(default=1, metadata={"min": 1,
                                              "help": "server processes on the port, each with its own model"})
    warm_up: bool = field(default=True, metadata={"help": "bfloat16 or int8 on CPU: before serving, build oneDNN's "
                                                          "per-shape kernels for every batch row count up to "
                                                          "--max-batch-tokens (at most 4096): a few seconds"})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level",
                                                     "choices": ["critical", "error", "warning", "info", "debug"]})


class ClientError(Exception):
    """A request the server refuses: its HTTP status, its `error_type` and a message saying what was wrong."""

    def __init__(self, status: int, message: str, error_type: str = "validation"):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


# ------------------------------------------------------------------------------------------------ metrics


class Metrics:
    """Counters, histograms and gauges, written out in the Prometheus text format (no client library).

    Example:
        >>> metrics = Metrics()
        >>> metrics.describe("berta_requests_total", "counter", "HTTP requests by route and status")
        >>> metrics.count("berta_requests_total", {"route": "/embed", "status": "200"})
        >>> "berta_requests_total{route=\\"/embed\\",status=\\"200\\"} 1" in metrics.render()
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = collections.defaultdict(dict)
        self._histograms: dict[str, tuple[tuple[float, ...], dict[tuple, list[float]]]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str, buckets: tuple[float, ...] | None = None) -> None:
        self._help[name] = (kind, text)
        if kind == "histogram":
            self._histograms[name] = (buckets or _LATENCY_BUCKETS, {})

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        self._help[name] = ("gauge", text)
        self._gauges[name] = read

    def count(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0) -> None:
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            self._counters[name][key] = self._counters[name].get(key, 0.0) + value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        buckets, series = self._histograms[name]
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            counts = series.setdefault(key, [0.0] * (len(buckets) + 2))  # per bucket, then sum and count
            for index, bound in enumerate(buckets):
                if value <= bound:
                    counts[index] += 1
            counts[-2] += value
            counts[-1] += 1

    def render(self) -> str:
        def labels(pairs: Sequence[tuple[str, str]]) -> str:
            return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if pairs else ""

        def number(value: float) -> str:
            return str(int(value)) if float(value).is_integer() else repr(float(value))

        lines = []
        with self._lock:
            for name, (kind, text) in self._help.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    for key, value in sorted(self._counters.get(name, {}).items()):
                        lines.append(f"{name}{labels(key)} {number(value)}")
                elif kind == "histogram":
                    buckets, series = self._histograms[name]
                    for key, counts in sorted(series.items()):
                        for bound, count in zip(buckets, counts, strict=False):
                            lines.append(f"{name}_bucket{labels((*key, ('le', number(bound))))} {number(count)}")
                        lines.append(f"{name}_bucket{labels((*key, ('le', '+Inf')))} {number(counts[-1])}")
                        lines.append(f"{name}_sum{labels(key)} {number(counts[-2])}")
                        lines.append(f"{name}_count{labels(key)} {number(counts[-1])}")
                else:
                    lines.append(f"{name} {number(self._gauges[name]())}")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ batching


@dataclass
class Job:
    """One request's inputs waiting for the model; `results` fill in as its inputs are batched."""

    kind: tuple  # (method, options...): only jobs of one kind share a batch
    inputs: list[Any]
    tokens: list[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # inputs already handed to a batch
    finished: int = 0  # inputs with a result
    cancelled: bool = False


class Batcher:
    """Packs the inputs of waiting jobs into model batches, on one inference thread.

    A batch starts when a job is waiting; it takes more jobs while they keep coming (each within max_wait of
    the last), up to max_batch_size inputs or GAPS * max_wait of waiting.

    `run(kind, inputs)` computes the results of one batch of inputs of one kind (it runs on the thread).

    Example:
        >>> batcher = Batcher(lambda kind, inputs: [len(x) for x in inputs], max_batch_size=8,
        ...                   max_batch_tokens=100, max_wait_ms=1, max_queue=16)  # doctest: +SKIP
    """

    GAPS = 8

    def __init__(self, run: Callable[[tuple, list[Any]], list[Any]], max_batch_size: int, max_batch_tokens: int,
                 max_wait_ms: float, max_queue: int, metrics: Metrics | None = None):
        self.run = run
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._jobs: collections.deque[Job] = collections.deque()
        self._waiting = 0  # inputs queued and not yet in a batch
        self._arrived = 0.0  # monotonic time of the last request queued
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="berta-inference", daemon=True)

    @property
    def queue_size(self) -> int:
        """Inputs waiting for a batch."""
        return self._waiting

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the batches of jobs already queued, then end the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout=60)

    def submit(self, kind: tuple, inputs: list[Any], tokens: list[int]) -> Job:
        """Queue a request's inputs; 429 at once when the queue would overflow."""
        loop = asyncio.get_running_loop()
        job = Job(kind, inputs, tokens, loop.create_future(), loop, results=[None] * len(inputs))
        with self._condition:
            if self._stopping:
                raise ClientError(503, "the server is shutting down", "unavailable")
            if self._waiting + len(inputs) > self.max_queue:
                raise ClientError(429, f"the queue is full ({self._waiting} inputs waiting, at most "
                                       f"{self.max_queue}); retry later", "overloaded")
            self._jobs.append(job)
            self._waiting += len(inputs)
            self._arrived = time.monotonic()
            self._condition.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a job's inputs that are not yet in a batch (its client disconnected or timed out)."""
        with self._condition:
            if not job.cancelled:
                job.cancelled = True
                self._waiting -= len(job.inputs) - job.taken
                job.taken = len(job.inputs)

    def _next_batch(self) -> tuple[tuple, list[tuple[Job, int]]] | None:
        with self._condition:
            while not self._jobs:
                if self._stopping:
                    return None
                self._condition.wait()
            # A short wait lets concurrent requests join this batch (`--max-wait-ms`): the batch closes when no
            # request has come for max_wait, or when it is full, and waits no more than GAPS * max_wait in all.
            now = time.monotonic()
            cap = now + self.GAPS * self.max_wait
            while self._waiting < self.max_batch_size and not self._stopping:
                deadline = min(cap, max(now, self._arrived) + self.max_wait)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            while self._jobs and self._jobs[0].cancelled:
                self._jobs.popleft()
            if not self._jobs:
                return None if self._stopping else ((), [])
            kind = self._jobs[0].kind
            picked: list[tuple[Job, int]] = []
            tokens = 0
            for job in list(self._jobs):
                if job.kind != kind or job.cancelled:
                    continue
                while job.taken < len(job.inputs) and len(picked) < self.max_batch_size:
                    cost = job.tokens[job.taken]
                    if picked and tokens + cost > self.max_batch_tokens:
                        break
                    picked.append((job, job.taken))
                    tokens += cost
                    job.taken += 1
                if len(picked) >= self.max_batch_size or (picked and tokens >= self.max_batch_tokens):
                    break
                if job.taken < len(job.inputs):
                    break  # the token budget is spent; the rest of this job goes in the next batch
            self._waiting -= len(picked)
            self._jobs = collections.deque(job for job in self._jobs if job.taken < len(job.inputs))
            self.metrics.observe("berta_batch_size", len(picked))
            self.metrics.observe("berta_batch_tokens", tokens)
            return kind, picked

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            kind, picked = batch
            if not picked:
                continue
            self.metrics.count("berta_batches_total", {"kind": kind[0]})
            try:
                results = self.run(kind, [job.inputs[index] for job, index in picked])
                outcome: list[Any] = list(zip(picked, results, strict=True))
            except Exception as error:  # one bad input must not fail the others: run each input alone
                log.warning("batch of %d %s inputs failed (%s); running its inputs one by one",
                            len(picked), kind[0], error)
                outcome = self._one_by_one(kind, picked)
            for (job, index), result in outcome:
                job.results[index] = result
                job.finished += 1
                if isinstance(result, BaseException):
                    self._finish(job, result)
                elif job.finished == len(job.inputs):
                    self._finish(job, job.results)

    def _one_by_one(self, kind: tuple, picked: list[tuple[Job, int]]) -> list[tuple[tuple[Job, int], Any]]:
        outcome = []
        for job, index in picked:
            try:
                (result,) = self.run(kind, [job.inputs[index]])
            except (ValueError, TypeError) as error:
                result = ClientError(422, str(error))
            except Exception as error:
                log.exception("inference failed")
                result = error
            outcome.append(((job, index), result))
        return outcome

    @staticmethod
    def _finish(job: Job, value: Any) -> None:
        def deliver() -> None:
            if job.future.done():
                return
            if isinstance(value, BaseException):
                job.future.set_exception(value)
            else:
                job.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop closed: the client is gone anyway
            job.loop.call_soon_threadsafe(deliver)


# ------------------------------------------------------------------------------------------------ validation


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = None, required: bool = False
           ) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ClientError(422, f"field {name!r} is missing")
        return default
    value = body[name]
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        expected = " or ".join(_JSON_NAMES[kind] for kind in kinds)
        raise ClientError(422, f"field {name!r} must be {expected}, got {_json_type(value)}")
    return value


_JSON_NAMES = {str: "a string", list: "a list", bool: "true or false", int: "an integer", float: "a number",
               dict: "an object"}


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _strings(value: Any, name: str) -> tuple[list[str], bool]:
    """A string or a non-empty list of strings, as (list, whether one string was sent)."""
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list):
        raise ClientError(422, f"field {name!r} must be a string or a list of strings, got {_json_type(value)}")
    if not value:
        raise ClientError(422, f"field {name!r} is an empty list; send at least one input")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ClientError(422, f"{name}[{index}] must be a string, got {_json_type(item)}")
    return value, False


class Server:
    """The ASGI app of one model: `Server(settings).app`; `berta serve` runs it on uvicorn."""

    def __init__(self, settings: ServeSettings):
        from berta.inference.pipeline import pipeline

        if settings.api_key is None and os.environ.get(API_KEY_ENVIRONMENT):
            settings = dataclasses.replace(settings, api_key=os.environ[API_KEY_ENVIRONMENT])
        self.settings = settings
        settings.apply_threads()
        self.pipe = pipeline(settings.model, device=settings.device, dtype=settings.dtype,
                             batch_size=settings.max_batch_size, backend=settings.backend, quantize=settings.quantize)
        self.warmed_row_counts = 0
        if settings.warm_up and isinstance(self.pipe.model, torch.nn.Module):
            from berta.inference.quantize import warm_up

            start = time.perf_counter()
            self.warmed_row_counts = warm_up(self.pipe.model, min(settings.max_batch_tokens, WARM_UP_ROWS))
            if self.warmed_row_counts:
                log.info("built the kernels for %d row counts in %.1f s", self.warmed_row_counts,
                         time.perf_counter() - start)
        self.metrics = Metrics()
        metrics = self.metrics
        metrics.describe("berta_requests_total", "counter", "HTTP requests by route and status")
        metrics.describe("berta_request_duration_seconds", "histogram", "request latency by route")
        metrics.describe("berta_batch_size", "histogram", "inputs per model batch", _SIZE_BUCKETS)
        metrics.describe("berta_batch_tokens", "histogram", "tokens per model batch", _TOKEN_BUCKETS)
        metrics.describe("berta_batches_total", "counter", "model batches run, by kind")
        self.batcher = Batcher(self._run, settings.max_batch_size, settings.max_batch_tokens, settings.max_wait_ms,
                               settings.max_queue, metrics)
        metrics.gauge("berta_queue_size", "inputs waiting for a batch", lambda: self.batcher.queue_size)
        self.in_flight = 0
        self.json_routes: dict[str, Callable[..., Any]] = {}  # POST path -> handler(body, request)
        metrics.gauge("berta_requests_in_flight", "requests being answered", lambda: self.in_flight)
        self.app = self._build_app()

    # -------------------------------------------------------------- inference (on the batcher's thread)

    def _run(self, kind: tuple, inputs: list[Any]) -> list[Any]:
        pipe, method = self.pipe, kind[0]
        if method == "embed":
            _, normalize = kind
            return list(pipe.embed(inputs, normalize=normalize))
        if method == "classify":
            _, raw = kind
            texts = [i[0] for i in inputs]
            pairs = [i[1] for i in inputs]
            function = "none" if raw else None
            if all(p is None for p in pairs):
                return pipe.classify(texts, top_k=None, function_to_apply=function)
            if any(p is None for p in pairs):  # pairs and single texts cannot share one tokenizer call
                return [pipe.classify([t], None if p is None else [p], top_k=None, function_to_apply=function)[0]
                        for t, p in zip(texts, pairs, strict=True)]
            return pipe.classify(texts, pairs, top_k=None, function_to_apply=function)
        if method == "tag":
            _, aggregation = kind
            return pipe.tag(inputs, aggregation=aggregation)
        if method == "answer":
            _, top_k, max_answer_length, doc_stride, impossible = kind
            return pipe.answer([q for q, _ in inputs], [c for _, c in inputs], top_k=top_k,
                               max_answer_length=max_answer_length, doc_stride=doc_stride,
                               handle_impossible=impossible)
        if method == "fill_mask":
            _, top_k, targets = kind
            return pipe.fill_mask(inputs, top_k=top_k, targets=list(targets) if targets else None)
        raise ValueError(f"unknown kind {kind!r}")

    # -------------------------------------------------------------- request helpers

    def _require(self, method: str) -> None:
        if method not in self.pipe.methods():
            from berta.inference.pipeline import task_methods

            serving = [task for task, methods in task_methods().items() if method in methods]
            architecture = (getattr(self.pipe.config, "extra", {}).get("architectures") or [self.pipe.task])[0]
            raise ClientError(400, f"this route needs a {' or '.join(serving)} model, but the loaded model's task "
                                   f"is {self.pipe.task!r} (a {architecture} checkpoint, without a trained "
                                   f"{' or '.join(serving)} head); it serves {self._routes_served()}", "task")

    def _routes_served(self) -> str:
        routes = {"embed": "/embed, /v1/embeddings", "classify": "/predict", "tag": "/tag", "answer": "/answer",
                  "fill_mask": "/fill-mask", "choose": "(no route)"}
        return ", ".join(routes[m] for m in self.pipe.methods()) + ", /tokenize"

    def _check_sizes(self, texts: list[str], inputs: int | None = None) -> None:
        limit = self.settings.max_client_batch_size
        if (len(texts) if inputs is None else inputs) > limit:
            raise ClientError(413, f"{len(texts) if inputs is None else inputs} inputs in one request; at most {limit} "
                                   "(--max-client-batch-size)")
        for index, text in enumerate(texts):
            if len(text) > self.settings.max_input_chars:
                raise ClientError(413, f"input {index} has {len(text)} characters; at most "
                                       f"{self.settings.max_input_chars} (--max-input-chars)")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # JSON's "\ud800" escape: a lone surrogate, not text
                code = f"\\u{ord(text[error.start]):04x}"
                raise ClientError(422, f"input {index} holds an unpaired surrogate ({code}) at character "
                                       f"{error.start}; it is not valid Unicode text") from None

    def _lengths(self, texts: list[str], pairs: list[str | None] | None = None) -> list[int]:
        # One text at a time: the parallel batch encoder's thread wake-ups cost more than a request's few texts.
        backend = self.pipe.tokenizer.backend
        pairs = pairs or [None] * len(texts)
        return [len(backend.encode(t, p).ids) for t, p in zip(texts, pairs, strict=True)]

    async def _submit(self, request: Any, kind: tuple, inputs: list[Any], tokens: list[int]) -> list[Any]:
        limit = self.pipe.max_length
        job = self.batcher.submit(kind, inputs, [min(t, limit) for t in tokens])
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({job.future, disconnected}, timeout=self.settings.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            self.batcher.cancel(job)
            if disconnected in done:
                raise ClientError(499, "the client closed the connection", "cancelled")
            raise ClientError(503, f"no result within {self.settings.request_timeout} s (--request-timeout)",
                              "timeout")
        finally:
            disconnected.cancel()
            if not job.future.done():
                job.future.cancel()
            self.batcher.cancel(job)

    # -------------------------------------------------------------- routes

    async def embed(self, body: dict[str, Any], request: Any) -> Any:
        self._require("embed")
        texts, _ = _strings(_field(body, "inputs", (str, list), required=True), "inputs")
        normalize = _field(body, "normalize", (bool,), True)
        truncate = _field(body, "truncate", (bool,), False)
        self._check_sizes(texts)
        tokens = self._lengths(texts)
        self._check_length(tokens, truncate)
        return await self._submit(request, ("embed", normalize), texts, tokens)  # float32 arrays, written by orjson

    def _check_length(self, tokens: list[int], truncate: bool) -> None:
        limit = min(self.pipe.max_length, (self.pipe.sentence_transformers.max_seq_length or self.pipe.max_length)
                    if self.pipe.sentence_transformers else self.pipe.max_length)
        if not truncate:
            for index, count in enumerate(tokens):
                if count > limit:
                    raise ClientError(413, f"input {index} has {count} tokens; this model reads at most {limit} "
                                           '(send "truncate": true to cut it)')

    async def openai_embeddings(self, body: dict[str, Any], request: Any) -> Any:
        self._require("embed")
        value = _field(body, "input", (str, list), required=True)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            raise ClientError(422, "token-id inputs are not supported; send text")
        texts, _ = _strings(value, "input")
        encoding = _field(body, "encoding_format", (str,), "float")
        if encoding not in ("float", "base64"):
            raise ClientError(422, f"encoding_format {encoding!r} is not 'float' or 'base64'")
        self._check_sizes(texts)
        tokens = self._lengths(texts)
        settings = self.pipe.sentence_transformers
        vectors = await self._submit(request, ("embed", settings.normalize if settings else True), texts, tokens)
        data = []
        for index, vector in enumerate(vectors):
            embedding: Any = (base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                              if encoding == "base64" else vector)
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        used = sum(min(t, self.pipe.max_length) for t in tokens)
        return {"object": "list", "data": data, "model": _field(body, "model", (str,), self.model_id),
                "usage": {"prompt_tokens": used, "total_tokens": used}}

    async def predict(self, body: dict[str, Any], request: Any) -> Any:
        self._require("classify")
        value = _field(body, "inputs", (str, list), required=True)
        raw = _field(body, "raw_scores", (bool,), False)
        single = isinstance(value, str) or (isinstance(value, list) and len(value) in (1, 2)
                                            and all(isinstance(v, str) for v in value))
        items = [value] if single else value
        if not items:
            raise ClientError(422, "field 'inputs' is an empty list; send at least one input")
        inputs: list[tuple[str, str | None]] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                inputs.append((item, None))
            elif isinstance(item, list) and len(item) in (1, 2) and all(isinstance(v, str) for v in item):
                inputs.append((item[0], item[1] if len(item) == 2 else None))
            else:
                raise ClientError(422, f"inputs[{index}] must be a string, [text] or [text, text_pair]")
        self._check_sizes([t for pair in inputs for t in pair if t is not None], len(inputs))
        tokens = self._lengths([t for t, _ in inputs], [p for _, p in inputs])
        results = await self._submit(request, ("classify", raw), inputs, tokens)
        return results[0] if single else results

    async def tokenize(self, body: dict[str, Any], request: Any) -> Any:
        texts, _ = _strings(_field(body, "inputs", (str, list), required=True), "inputs")
        special = _field(body, "add_special_tokens", (bool,), True)
        self._check_sizes(texts)
        tokenizer = self.pipe.tokenizer
        encodings = tokenizer(texts, padding=False, add_special_tokens=special).encodings
        return [[{"id": i, "text": token, "special": bool(s), "start": a, "stop": b}
                 for i, token, s, (a, b) in zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets, strict=True)]
                for e in encodings]

    async def tag(self, body: dict[str, Any], request: Any) -> Any:
        from berta.inference.pipeline import AGGREGATIONS

        self._require("tag")
        texts, single = _strings(_field(body, "inputs", (str, list), required=True), "inputs")
        aggregation = _field(body, "aggregation", (str,), "simple")
        if aggregation not in AGGREGATIONS:
            raise ClientError(422, f"aggregation {aggregation!r} is not one of {list(AGGREGATIONS)}")
        self._check_sizes(texts)
        results = await self._submit(request, ("tag", aggregation), texts, self._lengths(texts))
        return results[0] if single else results

    async def answer(self, body: dict[str, Any], request: Any) -> Any:
        self._require("answer")
        single = "inputs" not in body
        items = [body] if single else _field(body, "inputs", (list,), required=True)
        if not items:
            raise ClientError(422, "field 'inputs' is an empty list; send at least one question")
        inputs = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise ClientError(422, f"inputs[{index}] must be an object with question and context")
            inputs.append((_field(item, "question", (str,), required=True), _field(item, "context", (str,),
                                                                                   required=True)))
        top_k = _field(body, "top_k", (int,), 1)
        max_answer_length = _field(body, "max_answer_length", (int,), 30)
        doc_stride = _field(body, "doc_stride", (int,), 128)
        impossible = _field(body, "handle_impossible", (bool,), False)
        if not 1 <= top_k <= 20 or max_answer_length < 1 or doc_stride < 0:
            raise ClientError(422, "top_k must be 1..20, max_answer_length >= 1 and doc_stride >= 0")
        self._check_sizes([t for pair in inputs for t in pair], len(inputs))
        tokens = self._lengths([q for q, _ in inputs], [c for _, c in inputs])
        results = await self._submit(request, ("answer", top_k, max_answer_length, doc_stride, impossible),
                                     inputs, tokens)
        return results[0] if single else results

    async def fill_mask(self, body: dict[str, Any], request: Any) -> Any:
        self._require("fill_mask")
        texts, single = _strings(_field(body, "inputs", (str, list), required=True), "inputs")
        top_k = _field(body, "top_k", (int,), 5)
        if not 1 <= top_k <= 100:
            raise ClientError(422, f"top_k must be 1..100, got {top_k}")
        targets = _field(body, "targets", (list,), None)
        if targets is not None:
            targets, _ = _strings(targets, "targets")
            self._check_sizes(targets)
        self._check_sizes(texts)
        mask = self.pipe.tokenizer.mask_id
        tokens = []
        for index, encoding in enumerate(self.pipe.tokenizer.backend.encode_batch(texts)):
            if mask not in encoding.ids[: self.pipe.max_length]:
                raise ClientError(422, f"input {index} holds no mask token {self.pipe.tokenizer.mask_token} "
                                       f"(within its first {self.pipe.max_length} tokens)")
            tokens.append(len(encoding.ids))
        results = await self._submit(request, ("fill_mask", top_k, tuple(targets or ())), texts, tokens)
        return results[0] if single else results

    @property
    def model_id(self) -> str:
        return os.path.basename(os.path.normpath(self.settings.model))

    def info(self) -> dict[str, Any]:
        settings, pipe = self.settings, self.pipe
        return {
            "model_id": self.model_id, "model_path": str(settings.model), "task": pipe.task,
            "family": pipe.config.family, "dtype": pipe.dtype, "device": str(pipe.device),
            "backend": settings.backend, "threads": torch.get_num_threads(), "routes": self._routes_served(),
            "max_input_length": pipe.max_length, "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms,
            "max_client_batch_size": settings.max_client_batch_size, "max_input_chars": settings.max_input_chars,
            "max_body_bytes": settings.max_body_bytes, "max_queue": settings.max_queue,
            "request_timeout": settings.request_timeout,
            "labels": [pipe.config.id2label[i] for i in sorted(pipe.config.id2label)],
            "version": _version(), "pid": os.getpid(),
        }

    # -------------------------------------------------------------- the app

    def _build_app(self) -> Any:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, Response

        @contextlib.asynccontextmanager
        async def lifespan(app: Any):
            self.batcher.start()
            yield
            self.batcher.stop()

        # FastAPI's own /docs page loads Swagger UI from a CDN and is blank offline; berta's is one HTML page
        # made from the same OpenAPI document, with nothing to fetch.
        app = FastAPI(title="berta", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                      description=f"{self.model_id}: a {self.pipe.task} model. " + __doc__.split("\n\n")[2])

        @app.get("/docs", include_in_schema=False)
        async def docs() -> Any:
            from fastapi.responses import HTMLResponse

            return HTMLResponse(openapi_page(app.openapi()))

        def error(status: int, message: str, error_type: str) -> Any:
            return JSONResponse({"error": message, "error_type": error_type}, status_code=status)

        def route(path: str, handler: Callable[..., Any], schema: dict[str, Any], summary: str) -> None:
            self.json_routes[path] = handler  # answered by _Guard directly; the FastAPI route documents it

            async def endpoint(request) -> Any:  # noqa: ANN001 - annotated below for FastAPI
                # The guard answers these routes itself (`_answer`); this route documents them in the OpenAPI
                # schema and answers the same way should the app run without the guard.
                return Response(await _content(handler, await _json_body(request), request),
                                media_type="application/json")

            endpoint.__annotations__["request"] = Request  # a class, not the postponed string FastAPI cannot resolve

            app.add_api_route(path, endpoint, methods=["POST"], summary=summary, openapi_extra={
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}})

        strings = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
        route("/embed", self.embed, _object(inputs=strings, normalize={"type": "boolean", "default": True},
                                            truncate={"type": "boolean", "default": False}),
              "Sentence embeddings (text-embeddings-inference)")
        route("/v1/embeddings", self.openai_embeddings, _object(
            ["input"], input=strings, model={"type": "string"},
            encoding_format={"enum": ["float", "base64"], "default": "float"}), "Embeddings (OpenAI)")
        route("/predict", self.predict, _object(inputs={"oneOf": [
            {"type": "string"}, {"type": "array", "items": {}}]}, raw_scores={"type": "boolean", "default": False}),
              "Sequence classification (text-embeddings-inference)")
        route("/tokenize", self.tokenize, _object(inputs=strings, add_special_tokens={"type": "boolean"}),
              "Token ids with character offsets")
        route("/tag", self.tag, _object(inputs=strings, aggregation={
            "enum": ["none", "simple", "first", "average", "max"], "default": "simple"}), "Token classification")
        route("/answer", self.answer, _object([], question={"type": "string"}, context={"type": "string"},
                                              inputs={"type": "array"}, top_k={"type": "integer", "default": 1}),
              "Extractive question answering")
        route("/fill-mask", self.fill_mask, _object(inputs=strings, top_k={"type": "integer", "default": 5},
                                                    targets={"type": "array", "items": {"type": "string"}}),
              "Masked-token prediction")

        @app.get("/health", summary="200 while the model is loaded and the inference thread runs")
        async def health() -> Any:
            if not self.batcher._thread.is_alive():
                return error(503, "the inference thread is not running", "unhealthy")
            return {"status": "ok"}

        @app.get("/info", summary="The model, its task, dtype and the server's limits")
        async def info() -> Any:
            return self.info()

        @app.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
        async def metrics() -> Any:
            return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

        self._mount_attention(app)

        @app.exception_handler(ClientError)
        async def client_error(request: Request, exception: ClientError) -> Any:
            return error(exception.status, exception.message, exception.error_type)

        from starlette.exceptions import HTTPException

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, exception: HTTPException) -> Any:
            kinds = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
            message = str(exception.detail)
            if exception.status_code == 404:
                message = f"no route {request.url.path}; routes: {self._routes_served()}, /health, /info, /metrics"
            if exception.status_code == 405:
                message = f"{request.method} is not allowed on {request.url.path}"
            return error(exception.status_code, message, kinds.get(exception.status_code, "validation"))

        @app.exception_handler(Exception)
        async def server_error(request: Request, exception: Exception) -> Any:
            log.exception("unexpected error on %s", request.url.path)
            return error(500, f"internal error: {type(exception).__name__}", "backend")

        app.add_middleware(_Guard, server=self)
        return app

    def _mount_attention(self, app: Any) -> None:
        """`GET /attention` (a form, or the page for `?text=`) and `POST /attention` (the page for a text, as JSON
        or a submitted form): the offline viewer of `berta.viz.attention`, for models that give attention
        probabilities (PyTorch ones; an ONNX graph does not)."""
        try:
            from berta.viz.attention import attention_html
        except ImportError:
            return
        if not isinstance(self.pipe.model, torch.nn.Module):
            return
        from urllib.parse import parse_qs

        from fastapi.responses import HTMLResponse

        async def attention(request) -> Any:  # noqa: ANN001 - annotated below
            if request.method == "POST":
                if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                    raw = await request.body()
                    try:
                        form = {key: values[0] for key, values in parse_qs(raw.decode("utf-8")).items()}
                    except UnicodeDecodeError:
                        raise ClientError(422, "the form is not valid UTF-8") from None
                    if not form.get("text"):
                        raise ClientError(422, "the form has no 'text'")
                    text, pair = form["text"], form.get("pair") or None
                else:
                    body = await _json_body(request)
                    text, pair = _field(body, "text", (str,), required=True), _field(body, "pair", (str,))
            else:
                text, pair = request.query_params.get("text"), request.query_params.get("pair")
                if text is None:
                    return HTMLResponse(_ATTENTION_FORM)
            self._check_sizes([text] + ([pair] if pair else []))
            html = await asyncio.to_thread(attention_html, self.pipe.model, self.pipe.tokenizer, text, pair)
            return HTMLResponse(html)

        from fastapi import Request

        attention.__annotations__["request"] = Request
        app.add_api_route("/attention", attention, methods=["GET", "POST"], summary="Attention view (HTML)")


def openapi_page(spec: dict[str, Any]) -> str:
    """A self-contained HTML page of an OpenAPI document: every route with its summary and JSON schemas.

    Example:
        >>> "POST /embed" in openapi_page({"info": {"title": "t"}, "paths": {"/embed": {"post": {"summary": "s"}}}})
        True
    """
    from html import escape

    info = spec.get("info", {})
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(info.get('title', 'API'))}"
             "</title><style>body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "pre{background:#f4f4f4;padding:.6em;overflow:auto}h2{margin-top:1.6em}</style></head><body>",
             f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}</h1>",
             f"<p>{escape(info.get('description', ''))}</p><p><a href='/openapi.json'>openapi.json</a></p>"]
    for path, methods in spec.get("paths", {}).items():
        for method, operation in methods.items():
            summary = escape(operation.get("summary", ""))
            parts.append(f"<h2>{escape(method.upper())} {escape(path)}</h2><p>{summary}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append(f"<p>request body:</p><pre>{escape(json.dumps(body, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


_ATTENTION_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>berta attention</title></head>
<body><h1>Attention</h1>
<form method="post" action="/attention">
<p><label>Text<br><textarea name="text" rows="3" cols="80" required></textarea></label></p>
<p><label>Second text of a pair (optional)<br><textarea name="pair" rows="2" cols="80"></textarea></label></p>
<p><button type="submit">Show attention</button></p>
</form></body></html>
"""


def _object(required: Sequence[str] = ("inputs",), **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": properties}


async def _json_body(request: Any) -> dict[str, Any]:
    return _parse_body(await request.body())


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ClientError(422, "the request has no body; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ClientError(422, f"the body is not valid UTF-8 (byte {error.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClientError(422, f"the body is not valid JSON: {error.msg} at line {error.lineno} column "
                               f"{error.colno}") from None
    except RecursionError:
        raise ClientError(422, "the body nests too deeply") from None
    if not isinstance(body, dict):
        raise ClientError(422, f"the body must be a JSON object, got {type(body).__name__}")
    return body


async def _wait_for_disconnect(request: Any) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Guard:
    """ASGI middleware before the app: the body limit (413), the API key (401), request metrics."""

    def __init__(self, app: Any, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server, started, path = self.server, time.perf_counter(), scope["path"]
        status = {"code": 500}

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        server.in_flight += 1
        try:
            key = server.settings.api_key
            if key and path not in ("/health", "/docs", "/openapi.json") and not _authorised(scope, key):
                await _reply(send_counted, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                             "unauthorized")
                return
            body, problem = await _read_body(receive, server.settings.max_body_bytes)
            if problem is not None:
                await _reply(send_counted, 413, problem, "validation")
                return
            handler = server.json_routes.get(path) if scope["method"] == "POST" else None
            if handler is not None:
                await _answer(handler, body, receive, send_counted, path)
                return
            await self.app(scope, _replay(body, receive), send_counted)
        finally:
            server.in_flight -= 1
            route = path if path in _KNOWN_ROUTES else "other"
            server.metrics.count("berta_requests_total", {"route": route, "status": str(status["code"])})
            server.metrics.observe("berta_request_duration_seconds", time.perf_counter() - started,
                                   {"route": route})


_KNOWN_ROUTES = {"/embed", "/v1/embeddings", "/predict", "/tokenize", "/tag", "/answer", "/fill-mask", "/health",
                 "/info", "/metrics", "/docs", "/openapi.json", "/attention"}


class _Connection:
    """What a route handler reads of its request on the fast path: `receive`, for the client's disconnect."""

    def __init__(self, receive: Callable):
        self.receive = receive


async def _content(handler: Callable[..., Any], body: dict[str, Any], request: Any) -> bytes:
    """A JSON route's answer as bytes: orjson writes float32 arrays directly, ten times faster than json with
    floats made Python's."""
    import orjson

    return orjson.dumps(await handler(body, request), option=orjson.OPT_SERIALIZE_NUMPY)


async def _answer(handler: Callable[..., Any], raw: bytes, receive: Callable, send: Callable, path: str) -> None:
    """A JSON route's whole answer, without FastAPI's routing and middleware: a fifth of a request's time on
    the event loop at high concurrency. Same handler, same errors as the FastAPI route it stands in for."""
    import orjson

    status = 200
    try:
        content = await _content(handler, _parse_body(raw), _Connection(receive))
    except ClientError as error:
        status, content = error.status, orjson.dumps({"error": error.message, "error_type": error.error_type})
    except Exception as error:
        log.exception("unexpected error on %s", path)
        status = 500
        content = orjson.dumps({"error": f"internal error: {type(error).__name__}", "error_type": "backend"})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})


def _authorised(scope: dict, key: str) -> bool:
    import hmac

    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
    return False


async def _read_body(receive: Callable, limit: int) -> tuple[bytes, str | None]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", f"the body is larger than {limit} bytes (--max-body-bytes)"
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replay


async def _reply(send: Callable, status: int, message: str, error_type: str) -> None:
    payload = json.dumps({"error": message, "error_type": error_type}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("berta")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: ServeSettings | None = None) -> Any:
    """The ASGI app for `settings` (default: the JSON in $BERTA_SERVE_SETTINGS, as `--workers` passes it).

    Example:
        >>> app = create_app(ServeSettings(model="runs/minilm"))  # doctest: +SKIP
        >>> # uvicorn.run(app, port=8000)
    """
    if settings is None:
        settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENVIRONMENT]))
    return Server(settings).app


def serve(settings: ServeSettings) -> None:
    """Serve a model over HTTP (text-embeddings-inference and OpenAI routes) with dynamic batching.

    Example:
        >>> serve(ServeSettings(model="runs/minilm", port=8000))  # doctest: +SKIP
    """
    import uvicorn

    for name in ("max_batch_tokens", "max_batch_size", "max_client_batch_size", "max_input_chars",
                 "max_body_bytes", "max_queue", "workers"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    if settings.max_wait_ms < 0 or settings.request_timeout <= 0:
        raise ValueError("--max-wait-ms must be >= 0 and --request-timeout > 0")
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
              "timeout_graceful_shutdown": settings.request_timeout + 5}
    if settings.workers > 1:
        if settings.threads is None:  # N processes with a thread per core each would fight over the cores
            settings = dataclasses.replace(settings, threads=max(1, torch.get_num_threads() // settings.workers))
        # Each worker process imports the app factory and loads its own model; the settings go by environment.
        os.environ[SETTINGS_ENVIRONMENT] = json.dumps(dataclasses.asdict(settings))
        # A worker answers the supervisor's health check only once its model is loaded: give it the time.
        uvicorn.run("berta.inference.serve:create_app", factory=True, workers=settings.workers,
                    timeout_worker_healthcheck=300, **common)
        return
    server = Server(settings)
    print(f"berta serve: {settings.model} ({server.pipe.task}, {server.pipe.dtype} on {server.pipe.device}) at "
          f"http://{settings.host}:{settings.port}", flush=True)
    uvicorn.Server(uvicorn.Config(server.app, **common)).run()
