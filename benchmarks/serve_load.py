"""Load test of `hafrm serve` on loopback: healthy requests with malformed and oversized ones mixed in.

Starts the server as a subprocess (a tiny random model with the default tokenizer, or --model-dir), sends
--requests requests at --concurrency with --bad-fraction of them bad, while a separate prober process times
GET /health. Reports healthy requests failed (the target is 0), /health latency under load, and the server's
resident memory before and after (MALLOC_MMAP_THRESHOLD_ as in the training benchmark, so freed buffers go
back to the system and RSS tracks live memory). Bounded: --time-limit seconds in all.

    python benchmarks/serve_load.py                      # tiny model
    python benchmarks/serve_load.py --model-dir outputs/hafrm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

TOKEN = "load-test-token"
MAX_BODY_BYTES = 2**20
MAX_ITEMS = 64
WORDS = [
    "bread",
    "oven",
    "patience",
    "flour",
    "water",
    "salt",
    "yeast",
    "knead",
    "rise",
    "bake",
    "crust",
    "crumb",
    "warm",
    "kitchen",
    "time",
    "answer",
    "question",
    "kindly",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", help="a hafrm output folder (default: a tiny random model, built in a temporary folder)"
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run, start-up included")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.time_limit

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or build_tiny_model(Path(scratch) / "tiny")
        port = free_port()
        log_path = Path(scratch) / "server.log"
        server = start_server(model_dir, port, log_path)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base, server, log_path, deadline)
            rss_started = rss_kib(server.pid)
            requests = plan(args.requests, args.bad_fraction, random.Random(args.seed))
            asyncio.run(
                send_all([r for r in requests if r["expect"] == 200][:50], base, args.concurrency, deadline)
            )  # warm-up
            rss_before = rss_kib(server.pid)
            probe_results, stop_probe = multiprocessing.Queue(), multiprocessing.Event()
            prober = multiprocessing.Process(target=probe_health, args=(base, stop_probe, probe_results))
            prober.start()
            start = time.monotonic()
            outcomes = asyncio.run(send_all(requests, base, args.concurrency, deadline))
            elapsed = time.monotonic() - start
            stop_probe.set()
            latencies = probe_results.get(timeout=30)
            prober.join(timeout=10)
            time.sleep(1.0)  # let the server finish closing connections
            rss_after = rss_kib(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        report(args, model_dir, outcomes, elapsed, latencies, (rss_started, rss_before, rss_after), log_path)


def build_tiny_model(folder: Path) -> str:
    """A tiny random Llama with the default model's tokenizer, exported as a hafrm output folder (as in the tests)."""
    from hafrm.io.defaults import default_model_path
    from hafrm.io.pretrained import load_tokenizer
    from hafrm.model.hybrid import HybridRewardModel
    from hafrm.testing import tiny_llama

    tokenizer = load_tokenizer(str(default_model_path()))
    HybridRewardModel.from_causal_lm(tiny_llama(len(tokenizer))).export(folder, tokenizer, {})
    return str(folder)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir: str, port: int, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "hafrm.cli",
        "--log-level",
        "WARNING",
        "serve",
        model_dir,
        "--port",
        str(port),
        "--api-key",
        TOKEN,
        "--max-body-bytes",
        str(MAX_BODY_BYTES),
        "--max-items",
        str(MAX_ITEMS),
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_until_up(base: str, server: subprocess.Popen, log_path: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit("the server did not start within the time limit")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def healthy(rng: random.Random) -> dict:
    """A valid request of one of the three kinds; `items` is how many rewards its answer must hold."""
    kind = rng.choice(("score", "compare", "get_reward"))
    n = rng.randint(1, 4)
    if kind == "score":
        body = {"items": [{"prompt": text(rng, 3, 20), "response": text(rng, 5, 200)} for _ in range(n)]}
    elif kind == "compare":
        body = {
            "items": [
                {"prompt": text(rng, 3, 20), "response_a": text(rng, 5, 100), "response_b": text(rng, 5, 100)}
                for _ in range(n)
            ]
        }
    else:
        body = {"query": [f"User: {text(rng, 3, 20)}\nAssistant: {text(rng, 5, 200)}" for _ in range(n)]}
    return {"path": f"/{kind}", "content": json.dumps(body).encode(), "expect": 200, "items": n, "kind": kind}


async def oversized_chunks():
    """A body over the limit, streamed without Content-Length."""
    yield b'{"query": ["'
    for _ in range(MAX_BODY_BYTES // 65536 + 2):
        yield b"x" * 65536


BAD = [
    ("empty texts", "/get_reward", b'{"query": ["", ""]}', 422),
    (
        "one empty among valid",
        "/score",
        b'{"items": [{"prompt": "q", "response": "fine"}, {"prompt": "q", "response": ""}]}',
        422,
    ),
    ("NaN literal", "/get_reward", b'{"query": ["x"], "labels": [NaN]}', 422),
    ("lone surrogate", "/get_reward", b'{"query": ["\\ud800 x"]}', 422),
    ("malformed JSON", "/score", b'{"items": [', 422),
    ("too many items", "/get_reward", json.dumps({"query": ["x"] * (MAX_ITEMS + 1)}).encode(), 413),
    ("oversized chunked body", "/get_reward", None, 413),
    ("no token", "/score", b'{"items": [{"prompt": "q", "response": "r"}]}', 401),
]


def plan(count: int, bad_fraction: float, rng: random.Random) -> list[dict]:
    """Healthy requests from a pool of 100 (so repeated answers can be checked against each other), bad ones cycled."""
    pool = [healthy(rng) for _ in range(100)]
    bad_every = round(1 / bad_fraction) if bad_fraction > 0 else count + 1
    requests = []
    for i in range(count):
        if i % bad_every == bad_every - 1:
            name, path, content, status = BAD[(i // bad_every) % len(BAD)]
            requests.append({"path": path, "content": content, "expect": status, "kind": name})
        else:
            requests.append(rng.choice(pool))
    return requests


async def send_all(requests: list[dict], base: str, concurrency: int, deadline: float) -> list[dict]:
    queue: asyncio.Queue = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    outcomes: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client, queue, outcomes, deadline) for _ in range(concurrency)))
    return outcomes


async def worker(client: httpx.AsyncClient, queue: asyncio.Queue, outcomes: list, deadline: float) -> None:
    while not queue.empty() and time.monotonic() < deadline:
        request = queue.get_nowait()
        headers = {"content-type": "application/json"}
        if request["kind"] != "no token":
            headers["authorization"] = f"Bearer {TOKEN}"
        content = request["content"] if request["content"] is not None else oversized_chunks()
        try:
            response = await client.post(request["path"], content=content, headers=headers)
            outcomes.append({**request, "status": response.status_code, "body": response.text})
        except httpx.HTTPError as error:  # e.g. the server closed an oversized upload midway: a refusal
            outcomes.append({**request, "status": type(error).__name__, "body": ""})


def probe_health(base: str, stop, results) -> None:
    """In its own process, so the load generator's event loop does not add to the latencies measured."""
    latencies = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
    results.put(latencies)


def healthy_failures(outcomes: list[dict]) -> list[str]:
    """Healthy requests answered with anything but 200 and the right number of finite rewards, consistent across
    repeats."""
    failures, first_seen = [], {}
    for outcome in outcomes:
        if outcome["expect"] != 200:
            continue
        if outcome["status"] != 200:
            failures.append(f"{outcome['path']}: {outcome['status']} {outcome['body'][:200]}")
            continue
        answer = json.loads(outcome["body"])
        rewards = answer.get("rewards") or answer["reward_a"] + answer["reward_b"]
        expected = outcome["items"] * (2 if outcome["kind"] == "compare" else 1)
        earlier = first_seen.setdefault(outcome["content"], rewards)
        if len(rewards) != expected or not all(math.isfinite(r) for r in rewards):
            failures.append(f"{outcome['path']}: {len(rewards)} rewards for {expected} sequences")
        elif any(abs(a - b) > 1e-3 * max(1.0, abs(a)) for a, b in zip(rewards, earlier)):
            failures.append(f"{outcome['path']}: rewards {rewards} differ from the same request's earlier {earlier}")
    return failures


def report(args, model_dir, outcomes, elapsed, latencies, rss, log_path) -> None:
    rss_started, rss_before, rss_after = rss
    failures = healthy_failures(outcomes)
    bad = [o for o in outcomes if o["expect"] != 200]
    bad_statuses = Counter((o["kind"], o["status"]) for o in bad)
    server_errors = [o for o in outcomes if isinstance(o["status"], int) and o["status"] >= 500]
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    print(
        f"model: {model_dir if args.model_dir else 'tiny random Llama (hidden 32, 2 layers), default tokenizer'}; "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"requests sent: {len(outcomes)} of {args.requests} in {elapsed:.1f} s ({len(outcomes) / elapsed:.0f}/s), "
        f"concurrency {args.concurrency}, "
        f"{len(bad)} bad mixed in"
    )
    print(f"healthy requests failed: {len(failures)} of {len(outcomes) - len(bad)}")
    for failure in failures[:10]:
        print(f"  {failure}")
    print(f"server errors (5xx), any request: {len(server_errors)}")
    print(
        "bad requests, by kind and answer: "
        + ", ".join(f"{kind} -> {status} x{n}" for (kind, status), n in sorted(bad_statuses.items(), key=str))
    )
    print(
        f"/health under load ({len(latencies)} probes): p50 {quantiles[49] * 1000:.1f} ms, "
        f"p99 {quantiles[98] * 1000:.1f} ms, "
        f"max {max(latencies, default=float('nan')) * 1000:.1f} ms"
    )
    print(
        f"server RSS: {rss_started / 1024:.0f} MiB after start, {rss_before / 1024:.0f} MiB after warm-up (before), "
        f"{rss_after / 1024:.0f} MiB after the run ({100 * (rss_after / rss_before - 1):+.1f}% vs before)"
    )
    if server_errors:
        print(f"server log tail:\n{log_path.read_text()[-3000:]}")


if __name__ == "__main__":
    main()
