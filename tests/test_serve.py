"""berta serve on a real loopback port (uvicorn in a thread, or the `berta serve` command in a subprocess for
SIGTERM): every route against the offline pipeline, every error as a 4xx JSON body, dynamic batching seen in
/metrics, a disconnected client dropped from the queue, and requests in flight finished on shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import minilm_directory
from test_pipeline import TAGS, TEXTS, save_model

import berta
from berta.inference.serve import Server, ServeSettings
from berta.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, model: Path, **options):
        self.port = free_port()
        self.server = Server(ServeSettings(model=str(model), device="cpu", port=self.port, **options))
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.server.app, host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)

    def metric(self, line_start: str) -> float:
        text = self.client.get("/metrics").text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        return sum(values)


@pytest.fixture(scope="module")
def minilm():
    running = Running(minilm_directory(), max_client_batch_size=8, max_input_chars=2000, max_body_bytes=20_000,
                      max_queue=16, api_key=None, max_wait_ms=150)
    yield running
    running.close()


def check_error(response: httpx.Response, status: int, words: str, error_type: str = "validation") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type
    assert words in body["error"], body["error"]


def test_embed_and_openai_embeddings_equal_the_offline_pipeline(minilm):
    offline = berta.pipeline(minilm_directory(), device="cpu").embed(TEXTS)
    response = minilm.client.post("/embed", json={"inputs": TEXTS})
    assert response.status_code == 200
    assert np.asarray(response.json()) == pytest.approx(offline, abs=1e-5)
    single = minilm.client.post("/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    raw = berta.pipeline(minilm_directory(), device="cpu").embed(TEXTS[:1], normalize=False)
    assert np.asarray(single) == pytest.approx(raw, abs=1e-5)
    openai = minilm.client.post("/v1/embeddings", json={"input": TEXTS, "model": "minilm"}).json()
    assert [d["index"] for d in openai["data"]] == list(range(len(TEXTS)))
    assert np.asarray([d["embedding"] for d in openai["data"]]) == pytest.approx(offline, abs=1e-5)
    tokens = sum(len(minilm.server.pipe.tokenizer.encode(t).ids) for t in TEXTS)
    assert openai["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens} and openai["model"] == "minilm"
    encoded = minilm.client.post("/v1/embeddings", json={"input": "a", "encoding_format": "base64"}).json()
    import base64

    vector = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert vector == pytest.approx(berta.pipeline(minilm_directory(), device="cpu").embed(["a"])[0], abs=1e-5)


def test_tokenize_health_info_docs_metrics(minilm):
    tokens = minilm.client.post("/tokenize", json={"inputs": ["hello world", "x"]}).json()
    encoding = minilm.server.pipe.tokenizer.encode("hello world")
    assert [t["id"] for t in tokens[0]] == encoding.ids
    assert [(t["start"], t["stop"]) for t in tokens[0]] == encoding.offsets
    assert [t["special"] for t in tokens[0]] == [True, False, False, True]
    assert minilm.client.get("/health").json() == {"status": "ok"}
    info = minilm.client.get("/info").json()
    assert (info["task"], info["dtype"], info["max_input_length"], info["max_client_batch_size"]) == (
        "encoder", "float32", 512, 8)
    docs = minilm.client.get("/docs")  # berta's own page: no Swagger UI from a CDN, so it works offline
    assert docs.status_code == 200 and "POST /embed" in docs.text and "POST /v1/embeddings" in docs.text
    assert "http" not in docs.text.replace("http://", "").split("<body>")[0]  # nothing to fetch in the head
    paths = minilm.client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/v1/embeddings", "/predict", "/tokenize", "/tag", "/answer", "/fill-mask"} <= set(paths)
    metrics = minilm.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("berta_requests_total", "berta_request_duration_seconds_bucket", "berta_batch_size_bucket",
                 "berta_batch_tokens_bucket", "berta_queue_size"):
        assert name in metrics.text


def test_every_bad_request_is_a_4xx_json_error(minilm):
    client = minilm.client
    check_error(client.post("/embed", content=b'{"inputs": ["a",'), 422, "not valid JSON")
    check_error(client.post("/embed", content=b'{"inputs": "caf\xe9"}'), 422, "not valid UTF-8")
    check_error(client.post("/embed", content=b""), 422, "no body")
    check_error(client.post("/embed", json=["a"]), 422, "must be a JSON object")
    check_error(client.post("/embed", json={"inputs": []}), 422, "empty list")
    check_error(client.post("/embed", json={"inputs": 5}), 422, "'inputs' must be a string or a list, got a number")
    check_error(client.post("/embed", json={"inputs": ["a", 3]}), 422, "inputs[1] must be a string")
    check_error(client.post("/embed", json={"text": "a"}), 422, "field 'inputs' is missing")
    check_error(client.post("/embed", json={"inputs": "a", "normalize": "yes"}), 422,
                "'normalize' must be true or false, got a string")
    check_error(client.post("/embed", json={"inputs": ["a"] * 9}), 413, "9 inputs in one request; at most 8")
    check_error(client.post("/embed", json={"inputs": "a" * 2001}), 413, "2001 characters; at most 2000")
    check_error(client.post("/embed", json={"inputs": "word " * 300}), 413, "tokens; this model reads at most 256")
    with pytest.warns(UserWarning, match="1 of 1 texts are longer than 256 tokens and were truncated"):
        assert client.post("/embed", json={"inputs": "word " * 300, "truncate": True}).status_code == 200
    check_error(client.post("/embed", content=b'{"inputs": "' + b"a" * 30_000 + b'"}'), 413, "larger than 20000 bytes")
    check_error(client.post("/embed", content=b'{"a":' * 1500 + b"1" + b"}" * 1500), 422, "nests too deeply")
    check_error(client.post("/v1/embeddings", json={"input": [1, 2, 3]}), 422, "token-id inputs")
    check_error(client.post("/embed", content=b'{"inputs": ["ok", "a\\ud800b"]}'), 422,
                "input 1 holds an unpaired surrogate (\\ud800) at character 1")
    check_error(client.post("/tokenize", content=b'{"inputs": "\\udfff"}'), 422, "unpaired surrogate")
    check_error(client.post("/tag", json={"inputs": "x"}), 400, "needs a tokens model, but the loaded model's task "
                                                                "is 'encoder'", "task")
    check_error(client.post("/predict", json={"inputs": "x"}), 400, "task is 'encoder'", "task")
    check_error(client.get("/embed"), 405, "GET is not allowed", "method_not_allowed")
    check_error(client.post("/nowhere", json={}), 404, "no route /nowhere", "not_found")
    assert minilm.metric('berta_requests_total{route="/embed",status="5') == 0
    assert client.get("/health").status_code == 200  # still serving


def test_concurrent_requests_share_one_batch(minilm):
    before_batches = minilm.metric('berta_batches_total{kind="embed"}')
    before_inputs = minilm.metric("berta_batch_size_sum")
    texts = [f"sentence number {i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: minilm.client.post("/embed", json={"inputs": t}), texts))
    assert all(a.status_code == 200 for a in answers)
    batches = minilm.metric('berta_batches_total{kind="embed"}') - before_batches
    assert minilm.metric("berta_batch_size_sum") - before_inputs == 8
    assert batches < 8  # the 150 ms wait let concurrent requests join one batch
    offline = berta.pipeline(minilm_directory(), device="cpu").embed(texts)
    assert np.asarray([a.json()[0] for a in answers]) == pytest.approx(offline, abs=1e-5)


def test_a_disconnected_client_is_dropped_from_the_queue(minilm):
    # A client that hangs up while its request waits for a batch is dropped: no batch runs for it.
    before = minilm.metric('berta_batches_total{kind="embed"}')
    body = json.dumps({"inputs": ["dropped"]}).encode()
    with socket.create_connection(("127.0.0.1", minilm.port)) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while minilm.metric('berta_requests_total{route="/embed",status="499"}') < 1:
        assert time.monotonic() < deadline, "the disconnect was not seen"
        time.sleep(0.02)
    time.sleep(0.3)
    assert minilm.metric('berta_batches_total{kind="embed"}') == before
    assert minilm.metric("berta_queue_size") == 0


def test_queue_limit_refuses_at_once(tmp_path):
    running = Running(minilm_directory(), max_queue=4, max_wait_ms=0)
    try:
        started = time.monotonic()
        check_error(running.client.post("/embed", json={"inputs": ["a"] * 5}), 429, "the queue is full", "overloaded")
        assert time.monotonic() - started < 2
        assert running.client.post("/embed", json={"inputs": ["a"] * 4}).status_code == 200
    finally:
        running.close()


def test_api_key(monkeypatch):
    running = Running(minilm_directory(), api_key="s3cret")
    try:
        check_error(running.client.post("/embed", json={"inputs": "a"}), 401, "API key", "unauthorized")
        wrong = running.client.post("/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer nope"})
        check_error(wrong, 401, "API key", "unauthorized")
        right = running.client.post("/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert running.client.get("/health").status_code == 200  # load balancers probe without the key
    finally:
        running.close()
    monkeypatch.setenv("BERTA_API_KEY", "from-the-environment")
    running = Running(minilm_directory())
    try:
        check_error(running.client.post("/embed", json={"inputs": "a"}), 401, "API key", "unauthorized")
        right = running.client.post("/embed", json={"inputs": "a"},
                                    headers={"Authorization": "Bearer from-the-environment"})
        assert right.status_code == 200
    finally:
        running.close()


@pytest.fixture(scope="module")
def task_models(tmp_path_factory) -> dict[str, Path]:
    roberta = Tokenizer.from_pretrained("roberta")
    root = tmp_path_factory.mktemp("served")
    return {
        "classification": save_model(root / "classification", Tokenizer.from_pretrained(minilm_directory()),
                                     "classification", {0: "negative", 1: "positive"}),
        "tokens": save_model(root / "tokens", roberta, "tokens", TAGS),
        "qa": save_model(root / "qa", roberta, "qa", head_std=1.0),
        "masked-lm": save_model(root / "mlm", roberta, "masked-lm", head_std=0.02),
    }


def test_predict_tag_answer_fill_mask_equal_the_offline_pipeline(task_models):
    for task, directory in task_models.items():
        running = Running(directory)
        pipe = berta.pipeline(directory, device="cpu")
        try:
            client = running.client
            if task == "classification":
                one = client.post("/predict", json={"inputs": TEXTS[0]}).json()
                assert_same(one, pipe.classify([TEXTS[0]], top_k=None)[0])
                pair = client.post("/predict", json={"inputs": [TEXTS[0], "and a pair"]}).json()
                assert_same(pair, pipe.classify([TEXTS[0]], ["and a pair"], top_k=None)[0])
                batch = client.post("/predict", json={"inputs": [[t] for t in TEXTS], "raw_scores": True}).json()
                assert_same(batch, pipe.classify(TEXTS, top_k=None, function_to_apply="none"))
                check_error(client.post("/predict", json={"inputs": [[1, 2]]}), 422, "inputs[0] must be")
            elif task == "tokens":
                for aggregation in ("none", "first"):
                    got = client.post("/tag", json={"inputs": TEXTS, "aggregation": aggregation}).json()
                    assert_same(got, pipe.tag(TEXTS, aggregation=aggregation))
                check_error(client.post("/tag", json={"inputs": "x", "aggregation": "mean"}), 422, "aggregation")
            elif task == "qa":
                got = client.post("/answer", json={"question": "Who flew?", "context": TEXTS[0],
                                                   "doc_stride": 32}).json()
                assert_same(got, pipe.answer(["Who flew?"], [TEXTS[0]], doc_stride=32)[0])
                many = client.post("/answer", json={"inputs": [{"question": "Who?", "context": c} for c in TEXTS],
                                                    "top_k": 2, "doc_stride": 32}).json()
                assert_same(many, pipe.answer(["Who?"] * len(TEXTS), TEXTS, top_k=2, doc_stride=32))
                check_error(client.post("/answer", json={"question": "Who?"}), 422, "'context' is missing")
            else:
                texts = ["Paris is the <mask> of France.", "<mask> and <mask>."]
                got = client.post("/fill-mask", json={"inputs": texts, "top_k": 3}).json()
                assert_same(got, pipe.fill_mask(texts, top_k=3))
                check_error(client.post("/fill-mask", json={"inputs": "no mask"}), 422, "holds no mask token")
                check_error(client.post("/tag", json={"inputs": "x"}), 400, "task is 'masked-lm'", "task")
            assert running.metric('berta_requests_total{route="/') > 0
            assert running.metric('berta_requests_total{route="/predict",status="5') == 0
        finally:
            running.close()


def assert_same(served, offline) -> None:
    """JSON from the server equals the pipeline's result, floats to 1e-5."""
    if isinstance(offline, dict):
        assert set(served) == set(offline)
        for key in offline:
            assert_same(served[key], offline[key])
    elif isinstance(offline, (list, tuple)):
        assert len(served) == len(offline)
        for a, b in zip(served, offline, strict=True):
            assert_same(a, b)
    elif isinstance(offline, float):
        assert served == pytest.approx(offline, abs=1e-5)
    else:
        assert served == offline


def test_sigterm_finishes_requests_in_flight(tmp_path):
    directory = save_model(tmp_path / "model", Tokenizer.from_pretrained("roberta"), "encoder")
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "berta.cli", "serve", "--model", str(directory), "--port", str(port), "--device",
         "cpu", "--max-wait-ms", "1500", "--log-level", "warning"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.post, "/embed", json={"inputs": ["still answered"]})
            time.sleep(0.4)  # the request now waits 1.5 s for its batch
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 200 and len(answer.json()[0]) == 64
        # uvicorn re-raises the signal once it has shut down gracefully, so the exit status is SIGTERM's.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            client.get("/health")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


def test_workers_are_separate_processes_sharing_the_threads(tmp_path):
    """`--workers 2` runs two processes on one port, each with its own model and, unless told, half the threads."""
    directory = save_model(tmp_path / "model", Tokenizer.from_pretrained("roberta"), "encoder")
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "berta.cli", "serve", "--model", str(directory), "--port", str(port), "--device",
         "cpu", "--workers", "2", "--log-level", "warning"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        pids, threads = set(), set()
        while len(pids) < 2:
            assert process.poll() is None and time.monotonic() < deadline, (pids, process.stdout.read())
            try:  # a new connection each time, so the kernel hands it to either worker
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    info = client.get("/info").json()
                    vectors = client.post("/embed", json={"inputs": ["one", "two"]}).json()
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            pids.add(info["pid"])
            threads.add(info["threads"])
            assert len(vectors) == 2 and len(vectors[0]) == 64
        assert process.pid not in pids and threads == {1}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_attention_form_and_page_from_the_real_viewer(tmp_path):
    from berta.viz.attention import attention_html

    running = Running(minilm_directory())
    try:
        form = running.client.get("/attention")
        assert form.status_code == 200 and '<form method="post" action="/attention">' in form.text
        page = running.client.get("/attention", params={"text": "The cat sat.", "pair": "It slept."})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        expected = attention_html(running.server.pipe.model, running.server.pipe.tokenizer, "The cat sat.",
                                  "It slept.")
        assert page.text == expected and "slept" in page.text
        posted = running.client.post("/attention", data={"text": "The cat sat.", "pair": "It slept."})
        assert posted.text == expected
        assert running.client.post("/attention", json={"text": "The cat sat.", "pair": "It slept."}).text == expected
        check_error(running.client.post("/attention", json={"pair": "b"}), 422, "text")
    finally:
        running.close()


def test_a_request_past_its_timeout_is_answered_and_dropped():
    running = Running(minilm_directory(), request_timeout=0.3, max_wait_ms=2000)
    try:
        started = time.monotonic()
        check_error(running.client.post("/embed", json={"inputs": "slow"}), 503, "no result within 0.3 s", "timeout")
        assert time.monotonic() - started < 1.5
        assert running.metric("berta_queue_size") == 0
        assert running.client.get("/health").status_code == 200
    finally:
        running.close()


def test_warm_up_builds_the_bf16_and_int8_kernels_before_serving(caplog):
    """bf16 and int8 on CPU build a kernel per row count; the server builds them all before it serves
    (`--warm-up`, on by default), and skips it for float32 or when asked."""
    from berta.model import padded_row_counts

    model = str(minilm_directory())
    with caplog.at_level("INFO", logger="berta.inference.serve"):
        bf16 = Server(ServeSettings(model=model, device="cpu", dtype="bfloat16", max_batch_tokens=300))
    assert bf16.warmed_row_counts == len(padded_row_counts(300)) == 19
    assert "built the kernels for 19 row counts" in caplog.text
    int8 = Server(ServeSettings(model=model, device="cpu", quantize="int8", max_batch_tokens=100_000))
    assert int8.warmed_row_counts == len(padded_row_counts(4096))  # capped: larger batches dwarf a kernel's cost
    assert Server(ServeSettings(model=model, device="cpu")).warmed_row_counts == 0
    skipped = Server(ServeSettings(model=model, device="cpu", dtype="bfloat16", warm_up=False))
    assert skipped.warmed_row_counts == 0
