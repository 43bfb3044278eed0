"""The reward service against hostile input (issue 44): admission before the body is read, a bound on a request's
texts together, linear rollout normalisation, nothing scored for a client that hung up, non-finite rewards and deep
JSON answered in JSON, SIGHUP drains, and keyless loopback mode refuses browser pages."""

import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from helpers import running

from hafrm.data.encoding import PairEncoder
from hafrm.eval.scoring import RewardScorer
from hafrm.model.hybrid import HybridRewardModel
from hafrm.serve.server import ServeLimits, create_app, sigmoid

LIMITS = ServeLimits(max_items=8, max_chars=2000, max_request_chars=5000, max_batch_size=1, max_wait_ms=1)


@pytest.fixture(scope="module")
def served_model(tokenizer, tmp_path_factory, tiny_causal_lm):
    folder = tmp_path_factory.mktemp("served")
    HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer))).export(folder, tokenizer, {"config": {}})
    return folder


class SlowCountingScorer(RewardScorer):
    """The real scorer, each forward pass delayed and every scored sequence counted."""

    def __init__(self, folder, delay: float):
        super().__init__(folder, max_length=128)
        self.delay, self.scored = delay, 0

    def score_ids(self, sequences, batch_size=8, progress=False):
        time.sleep(self.delay)
        self.scored += len(sequences)
        return super().score_ids(sequences, batch_size, progress)


def item(text="Hi"):
    return {"items": [{"prompt": text, "response": "Hello there"}]}


@contextlib.contextmanager
def one_request_in_progress(scorer, limits):
    """The app served, with one request admitted and being scored (slowly) in a thread: (port, client, its thread)."""
    with running(create_app(scorer, limits), limits) as port:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        first = threading.Thread(target=lambda: client.post("/score", json=item()).raise_for_status())
        first.start()
        while client.get("/metrics").json()["in_progress"] < 1:
            time.sleep(0.01)
        yield port, client, first


def test_admission_is_refused_before_the_body_is_read(served_model):
    limits = ServeLimits(max_concurrent=1, max_batch_size=1, body_timeout=5.0)
    scorer = SlowCountingScorer(served_model, delay=1.0)
    with one_request_in_progress(scorer, limits) as (port, client, first):
        with socket.create_connection(("127.0.0.1", port)) as connection:  # a head that promises a body, no body
            connection.sendall(
                b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            connection.settimeout(3)
            answer = connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()  # not a 408 after 5 s
        first.join()
        counters = client.get("/metrics").json()
    assert counters["refused_busy"] == 1 and counters["admitted"] == 1 and counters["in_progress"] == 0


def test_messages_are_bounded_together_not_only_one_by_one(served_model):
    with running(create_app(RewardScorer(served_model), LIMITS), LIMITS) as port:
        messages = [{"role": "user", "content": "x" * 1500}, {"role": "assistant", "content": "y" * 1500}] * 2
        answer = httpx.post(f"http://127.0.0.1:{port}/score", json={"items": [{"prompt": messages, "response": "z"}]})
    assert answer.status_code == 413 and "6001 characters in the request's texts; at most 5000" in answer.text


class CountingText(str):
    """A string that counts the prefix and suffix tests made on it: the work normalise_rollout does."""

    calls = 0

    def startswith(self, *args):
        CountingText.calls += 1
        return super().startswith(*args)

    def endswith(self, *args):
        CountingText.calls += 1
        return super().endswith(*args)


@pytest.mark.parametrize("shape", ["x{eos}y", "{eos}x", "x{eos}"])
def test_rollout_normalisation_does_linear_work(tokenizer, shape, monkeypatch):
    """No regular expression (a backtracking one was quadratic on `x` + EOS * n + `y`), and a number of prefix and
    suffix tests linear in the fillers it strips."""
    import re

    encoder = PairEncoder(tokenizer)
    eos, n = tokenizer.eos_token, 5000
    text = shape.replace("{eos}", eos * n)
    encoder.normalise_rollout("warm up")  # the tokenizer's own lazy work, if any, is not the function's
    CountingText.calls = 0
    with monkeypatch.context() as patched:
        for name in ("sub", "match", "search", "fullmatch", "compile", "findall", "finditer", "split"):
            patched.setattr(re, name, lambda *args, **kwargs: pytest.fail("normalise_rollout used a regex"))
        normalised = encoder.normalise_rollout(CountingText(text))
    assert CountingText.calls <= 4 * (n + 2)  # at most two fillers tried per end per filler removed
    body = normalised.removeprefix(encoder.format_start)  # the BOS the format starts with, given back
    assert body.removesuffix(encoder.turn_end).strip(eos) == text.strip(eos) or body.startswith("x")


def test_a_client_that_hangs_up_is_never_scored(served_model):
    limits = ServeLimits(max_batch_size=1, max_wait_ms=1)
    scorer = SlowCountingScorer(served_model, delay=1.0)
    with one_request_in_progress(scorer, limits) as (port, client, first):
        body = json.dumps({"items": [item(f"question {i}")["items"][0] for i in range(4)]}).encode()
        with socket.create_connection(("127.0.0.1", port)) as connection:  # sends a whole request, then hangs up
            connection.sendall(
                b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)
        first.join()
        deadline = time.time() + 10
        while client.get("/metrics").json()["in_progress"] and time.time() < deadline:
            time.sleep(0.05)
        counters = client.get("/metrics").json()
    assert scorer.scored == 1  # the first request's one sequence; none of the four whose client left
    assert counters["cancelled_client_gone"] == 1


def test_large_and_non_finite_rewards_are_answered_in_json(served_model, monkeypatch):
    scorer = RewardScorer(served_model)
    values = {"rewards": [1000.0, -1000.0]}
    monkeypatch.setattr(scorer, "score_ids", lambda sequences, batch_size=8, progress=False: values["rewards"])
    limits = ServeLimits(max_batch_size=2)
    with running(create_app(scorer, limits), limits) as port:
        url = f"http://127.0.0.1:{port}"
        pair = {"items": [{"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away."}]}
        compared = httpx.post(f"{url}/compare", json=pair).json()
        assert compared["prob_a_preferred"] == [1.0]
        values["rewards"] = [0.5, math.nan]
        failed = httpx.post(f"{url}/compare", json=pair)
        assert failed.status_code == 500
        assert failed.json() == {"detail": "items[0].response_b: the model's reward is not finite (nan)"}
        values["rewards"] = [math.inf]
        failed = httpx.post(f"{url}/get_reward", json={"query": ["<|im_start|>user\nHi<|im_end|>"]})
        assert failed.status_code == 500 and failed.json()["detail"].startswith("query[0]: ")


def test_sigmoid_is_stable_at_every_finite_difference():
    assert sigmoid(800.0) == 1.0 and sigmoid(-800.0) == 0.0 and sigmoid(0.0) == 0.5
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_deeply_nested_json_is_a_422(served_model):
    with running(create_app(RewardScorer(served_model), LIMITS), LIMITS) as port:
        body = b"[" * 100_000 + b"]" * 100_000
        answer = httpx.post(
            f"http://127.0.0.1:{port}/score", content=body, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422 and "too deeply" in answer.json()["detail"]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"host": "evil.example:8000"}, 421),
        ({"host": "127.0.0.1.evil.example"}, 421),
        ({"origin": "http://evil.example"}, 403),
        ({"content-type": "text/plain"}, 415),
        ({"host": "localhost:1234"}, 200),
        ({"host": "[::1]:1234"}, 200),
    ],
)
def test_keyless_loopback_mode_answers_no_web_page(served_model, headers, status):
    with running(create_app(RewardScorer(served_model), LIMITS, local_only=True), LIMITS) as port:
        body = json.dumps(item()).encode()
        sent = {"content-type": "application/json", **headers}
        answer = httpx.post(f"http://127.0.0.1:{port}/score", content=body, headers=sent)
    assert answer.status_code == status, answer.text


def test_sighup_drains_like_sigterm(served_model, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "hafrm.cli", "serve", str(served_model), "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        process.send_signal(signal.SIGHUP)
        process.wait(timeout=30)
    finally:
        process.kill()
    text = log.read_text()
    assert "Shutting down" in text and "Finished server process" in text, text[-2000:]
