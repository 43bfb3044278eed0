"""Load test of `hafrm serve` on loopback: healthy requests with malformed, oversized and hostile ones mixed in.

Starts the server as a subprocess with its default limits (a tiny random model with the default tokenizer, or
--model-dir), sends --requests requests at --concurrency with --bad-fraction of them bad or hostile (the attacks of
issue 44: a quadratic-regex bait, deeply nested JSON, a flood of chat messages, clients that hang up after sending
a large request), while a separate prober process times GET /health. A healthy request refused as busy (503) is
retried after its Retry-After, as a client should; it fails only if it never gets its rewards. Reports healthy
requests failed (the target is 0), /health latency under load, the server's resident memory idle, at its peak
(VmHWM) and settled 10 s after the run (MALLOC_MMAP_THRESHOLD_ as in the training benchmark, so freed buffers go
back to the system), and the CPU each process used (on 2 cores the load generator competes with the server).
Bounded: --time-limit seconds in all.

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

from hafrm.serve.limits import ServeLimits

TOKEN = "load-test-token"
LIMITS = ServeLimits()  # the server runs with its defaults
MAX_BODY_BYTES = LIMITS.max_body_bytes
MAX_ITEMS = LIMITS.max_items
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
            start, server_cpu, own_cpu = time.monotonic(), cpu_seconds(server.pid), sum(os.times()[:2])
            outcomes = asyncio.run(send_all(requests, base, args.concurrency, deadline))
            elapsed = time.monotonic() - start
            cpu = {"server": cpu_seconds(server.pid) - server_cpu, "load generator": sum(os.times()[:2]) - own_cpu}
            stop_probe.set()
            latencies, cpu["/health prober"] = probe_results.get(timeout=30)
            prober.join(timeout=10)
            rss_peak = rss_kib(server.pid, "VmHWM")
            time.sleep(10.0)  # idle: what the server keeps once the burst is over
            rss_after = rss_kib(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        rss = (rss_started, rss_before, rss_peak, rss_after)
        report(args, model_dir, outcomes, elapsed, latencies, rss, cpu, log_path)


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


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


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
    ("deeply nested JSON", "/score", b"[" * 100_000 + b"]" * 100_000, 422),
    (
        "message flood",
        "/score",
        json.dumps({"items": [{"prompt": [{"role": "user", "content": "m" * 999}] * 1500, "response": "r"}]}).encode(),
        413,
    ),
    ("regex bait", "/get_reward", json.dumps({"query": ["x" + "<|im_end|>" * 9000 + "y"]}).encode(), 200),
    ("hang-up", "/score", json.dumps({"items": [{"prompt": "q " * 700, "response": "r " * 700}] * 64}).encode(), None),
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
        if request["kind"] == "hang-up":
            outcomes.append({**request, "status": await hang_up(client, request), "body": "", "busy": 0})
            continue
        headers = {"content-type": "application/json"}
        if request["kind"] != "no token":
            headers["authorization"] = f"Bearer {TOKEN}"
        busy = 0
        while True:
            content = request["content"] if request["content"] is not None else oversized_chunks()
            try:
                response = await client.post(request["path"], content=content, headers=headers)
            except httpx.HTTPError as error:  # e.g. the server closed an oversized upload midway: a refusal
                outcomes.append({**request, "status": type(error).__name__, "body": "", "busy": busy})
                break
            if response.status_code == 503 and busy < 60 and time.monotonic() < deadline:
                busy += 1  # refused before its body was read: retry after the time the server asks for
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            outcomes.append({**request, "status": response.status_code, "body": response.text, "busy": busy})
            break


async def hang_up(client: httpx.AsyncClient, request: dict) -> str:
    """Send the whole request on a connection of its own, then close it before the answer comes."""
    host, port = str(client.base_url.host), client.base_url.port
    reader, writer = await asyncio.open_connection(host, port)
    body = request["content"]
    head = (
        f"POST {request['path']} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    return "hung up"


def probe_health(base: str, stop, results) -> None:
    """In its own process, so the load generator's event loop does not add to the latencies measured; also reports
    the CPU seconds it used."""
    latencies = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
    times = os.times()
    results.put((latencies, times.user + times.system))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthy_failures(outcomes: list[dict]) -> list[str]:
    """Healthy requests answered with anything but 200 and the right number of finite rewards, consistent across
    repeats."""
    failures, first_seen = [], {}
    for outcome in outcomes:
        if "items" not in outcome:  # bad or hostile
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


def report(args, model_dir, outcomes, elapsed, latencies, rss, cpu, log_path) -> None:
    rss_started, rss_before, rss_peak, rss_after = rss
    failures = healthy_failures(outcomes)
    bad = [o for o in outcomes if "items" not in o]
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
    retried = [o for o in outcomes if "items" in o and o.get("busy")]
    print(
        f"healthy requests failed: {len(failures)} of {len(outcomes) - len(bad)} "
        f"({len(retried)} were refused as busy first and retried, {sum(o['busy'] for o in retried)} refusals)"
    )
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
        f"server RSS: {rss_started / 1024:.0f} MiB after start, {rss_before / 1024:.0f} MiB idle after warm-up, "
        f"peak {rss_peak / 1024:.0f} MiB, {rss_after / 1024:.0f} MiB settled 10 s after the run "
        f"({(rss_after - rss_before) / 1024:+.0f} MiB vs idle)"
    )
    print(
        f"CPU over the run's {elapsed:.0f} s on {os.cpu_count()} cores: "
        + ", ".join(
            f"{name} {seconds:.0f} s ({100 * seconds / elapsed:.0f}% of one core)" for name, seconds in cpu.items()
        )
    )
    if server_errors:
        print(f"server log tail:\n{log_path.read_text()[-3000:]}")


if __name__ == "__main__":
    main()
