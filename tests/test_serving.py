"""The reward service: a real uvicorn server on loopback, called with a real HTTP client (or a raw socket
where the test is about what reaches the server byte by byte)."""

import asyncio
import contextlib
import socket
import threading
import time

import httpx
import pytest
from helpers import running

from hafrm.cli.main import main
from hafrm.eval.scoring import RewardScorer
from hafrm.serve.server import DynamicBatcher, ServeLimits, create_app, public_name

TOKEN = "s3cret"
LIMITS = ServeLimits(
    max_items=8,
    max_chars=2000,
    max_body_bytes=50_000,
    max_batch_size=4,
    max_wait_ms=20,
    body_timeout=1.0,
    timeout_keep_alive=1.0,
)


@pytest.fixture(scope="module")
def served_model(tiny_model_dir, tokenizer, tmp_path_factory, tiny_causal_lm):
    """Export the tiny model as a hafrm output folder."""

    from hafrm.model.hybrid import HybridRewardModel

    folder = tmp_path_factory.mktemp("served")
    HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer))).export(folder, tokenizer, {})
    return folder


@pytest.fixture(scope="module")
def scorer(served_model):
    return RewardScorer(served_model, max_length=128)


@pytest.fixture(scope="module")
def server(served_model, scorer):
    app = create_app(scorer, LIMITS, api_key=TOKEN, model_name=public_name(served_model))
    with (
        running(app, LIMITS) as port,
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client,
    ):
        yield client, scorer


def raw_exchange(port: int, data: bytes, wait: float) -> bytes:
    """Send data on a fresh connection, then read until the server closes it (or `wait` seconds pass)."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(data)
        connection.settimeout(wait)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := connection.recv(65536):
                received += chunk
        return received


def head(path: str, extra: str = "", token: str | None = TOKEN) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}{extra}\r\n".encode()


def test_health_and_score_match_direct_scoring(server, served_model):
    client, scorer = server
    health = client.get("/health")
    assert health.json() == {"status": "ok", "model": served_model.name}
    assert str(served_model.parent) not in health.text  # no absolute path for anyone to read
    items = [
        {"prompt": "How do I bake bread?", "response": "Knead and bake."},
        {"prompt": "Hi", "response": "Hello there"},
    ]
    rewards = client.post("/score", json={"items": items}).json()["rewards"]
    assert rewards == pytest.approx(
        scorer.score([i["prompt"] for i in items], [i["response"] for i in items]), rel=1e-5
    )


def test_compare_and_openrlhf_endpoint(server):
    client, scorer = server
    answer = client.post(
        "/compare", json={"items": [{"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away."}]}
    ).json()
    a, b = answer["reward_a"][0], answer["reward_b"][0]
    assert answer["prob_a_preferred"][0] == pytest.approx(1 / (1 + pow(2.718281828459045, b - a)), rel=1e-6)
    text = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tokenize=False
    )
    openrlhf = client.post("/get_reward", json={"query": [text], "prompts": ["Hi"]}).json()
    assert openrlhf["rewards"] == pytest.approx([a], rel=1e-5) and openrlhf["scores"] == openrlhf["rewards"]


def test_every_endpoint_reads_the_reward_where_training_does(server):
    """/score with messages, /compare and /get_reward on OpenRLHF rollouts (left-padded with pad or EOS strings,
    stopped at EOS without the template's newline, right-padded) all give the reward of the formatted conversation."""
    client, scorer = server
    prompt = [{"role": "user", "content": "How do I keep bread fresh?"}]
    responses = ["Keep it in a paper bag.", "\n\nWrap it   tightly."]
    expected = scorer.score([prompt] * 2, responses)
    tokenizer = scorer.tokenizer
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    texts = [
        tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": r}], tokenize=False) for r in responses
    ]
    at_eos = [t.removesuffix("\n") for t in texts]
    assert all(t.endswith(eos) for t in at_eos)
    scored = client.post("/score", json={"items": [{"prompt": prompt, "response": r} for r in responses]}).json()[
        "rewards"
    ]
    compared = client.post(
        "/compare", json={"items": [{"prompt": prompt, "response_a": responses[0], "response_b": responses[1]}]}
    ).json()
    assert scored == pytest.approx(expected, abs=1e-4)
    assert [compared["reward_a"][0], compared["reward_b"][0]] == pytest.approx(expected, abs=1e-4)
    for queries in (
        texts,
        at_eos,
        [eos * 5 + t for t in at_eos],
        [pad * 3 + t + pad * 2 for t in at_eos],
        [t + eos * 4 for t in at_eos],
    ):
        assert client.post("/get_reward", json={"query": queries}).json()["rewards"] == pytest.approx(
            expected, abs=1e-4
        ), queries


def test_concurrent_requests_are_batched_and_answered_in_order(server):
    client, scorer = server
    texts = [f"answer number {i} " * (i + 1) for i in range(6)]
    expected = scorer.score(["q"] * 6, texts)
    results = [None] * 6

    def call(i):
        results[i] = client.post("/score", json={"items": [{"prompt": "q", "response": texts[i]}]}).json()["rewards"][0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == pytest.approx(expected, rel=1e-5)


def test_an_empty_request_never_fails_a_valid_one_sent_with_it(server):
    client, scorer = server
    texts = ["hello world", "another fine answer"]
    expected = [scorer.score_ids([scorer.encode_text(t)])[0] for t in texts]

    def call(answers, name, body):
        answers[name] = client.post("/get_reward", json=body)

    for _ in range(5):
        answers = {}
        valid = threading.Thread(target=call, args=(answers, "valid", {"query": texts}))
        valid.start()
        time.sleep(0.003)
        call(answers, "empty", {"query": [""] * LIMITS.max_items})
        valid.join()
        assert answers["valid"].status_code == 200
        assert answers["valid"].json()["rewards"] == pytest.approx(expected, rel=1e-5)
        assert answers["empty"].status_code == 422


@pytest.mark.parametrize(
    "path, body",
    [
        ("/get_reward", {"query": ["a fine text", ""]}),
        ("/get_reward", {"query": ["a fine text", "  \n"]}),
        ("/score", {"items": [{"prompt": "q", "response": "r"}, {"prompt": "q", "response": ""}]}),
        ("/score", {"items": [{"prompt": "", "response": "r"}]}),
        ("/score", {"items": [{"prompt": [{"role": "user", "content": ""}], "response": "r"}]}),
        ("/compare", {"items": [{"prompt": "q", "response_a": "a", "response_b": ""}]}),
    ],
)
def test_an_empty_text_is_a_422_never_a_reward_of_zero(server, path, body):
    client, _ = server
    response = client.post(path, json=body)
    assert response.status_code == 422 and "empty text" in response.text


def test_a_batch_that_fails_is_retried_request_by_request():
    """Only the request whose forward pass fails gets the error; the others in its batch get their rewards."""

    calls = []

    class Scorer:
        def score_ids(self, sequences, batch_size):
            calls.append(len(sequences))
            if [666] in sequences:
                raise RuntimeError("a forward pass that fails on this input")
            return [float(s[0]) for s in sequences]

    async def scenario():
        batcher = DynamicBatcher(Scorer(), ServeLimits(max_batch_size=16, max_wait_ms=50))
        batcher.start()
        outcomes = await asyncio.gather(
            batcher.score([[1], [2]]), batcher.score([[666]]), batcher.score([[3]]), return_exceptions=True
        )
        await batcher.stop()
        return outcomes

    good, bad, other = asyncio.run(scenario())
    assert calls[0] == 4  # the three requests were batched together first
    assert good == [1.0, 2.0] and other == [3.0]
    assert isinstance(bad, RuntimeError)


@pytest.mark.parametrize(
    "content",
    [
        b'{"query": ["a text"], "labels": [NaN]}',
        b'{"query": ["a text"], "labels": [-Infinity]}',
        b'{"query": [Infinity]}',
        b'{"query": ["\\ud800"]}',
        b'{"items": [{"prompt": "\\udc00 hi", "response": "r"}]}',
        b'\xff\xfe{"query": ["a"]}',
    ],
)
def test_non_finite_numbers_and_lone_surrogates_are_422(server, content):
    client, _ = server
    path = "/score" if b"items" in content else "/get_reward"
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "detail" in response.json()


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ({"json": {"items": [{"prompt": "q"}]}}, 422),
        ({"json": {"items": []}}, 422),
        ({"json": {"items": [{"prompt": "q", "response": "r"}] * 9}}, 413),
        ({"json": {"items": [{"prompt": "q", "response": "x" * 2001}]}}, 413),
        ({"content": b"{" + b" " * 60_000 + b"}", "headers": {"content-type": "application/json"}}, 413),
        ({"json": {"items": [{"prompt": [{"role": "user"}], "response": "r"}]}}, 422),
    ],
)
def test_bad_requests_get_clear_4xx_and_server_stays_healthy(server, request_kwargs, status):
    client, _ = server
    response = client.post("/score", **request_kwargs)
    assert response.status_code == status
    assert "detail" in response.json()
    assert client.post("/score", json={"items": [{"prompt": "q", "response": "r"}]}).status_code == 200


def test_body_limit_holds_for_chunked_bodies_without_content_length(server):
    client, _ = server
    chunks = (b'{"query": ["' if i == 0 else b"x" * 10_000 for i in range(7))  # 60 kB, no Content-Length
    response = client.post("/get_reward", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_token_is_checked_before_the_body_is_read(server):
    """An anonymous chunked request whose body never comes is refused at once, not after the body deadline."""
    port = server[0].base_url.port
    start = time.perf_counter()
    answer = raw_exchange(port, head("/get_reward", "Transfer-Encoding: chunked\r\n", token=None), wait=5)
    assert answer.startswith(b"HTTP/1.1 401") and time.perf_counter() - start < LIMITS.body_timeout


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(server, scheme):
    client, _ = server
    answer = httpx.post(
        f"{client.base_url}/score",
        json={"items": [{"prompt": "q", "response": "r"}]},
        headers={"Authorization": f"{scheme} {TOKEN}"},
    )
    assert answer.status_code == 200


@pytest.mark.parametrize("authorization", [None, "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_bearer_token_is_required(server, authorization):
    client, _ = server
    headers = {"Authorization": authorization} if authorization else {}
    answer = httpx.post(f"{client.base_url}/score", json={"items": [{"prompt": "q", "response": "r"}]}, headers=headers)
    assert answer.status_code == 401


def test_a_stalled_body_gets_408_and_the_connection_is_closed(server):
    port = server[0].base_url.port
    start = time.perf_counter()
    answer = raw_exchange(
        port, head("/get_reward", "Content-Length: 100\r\n") + b'{"query": [', wait=LIMITS.body_timeout + 4
    )
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.perf_counter() - start < LIMITS.body_timeout + 2  # closed by the server, not by our wait


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /score HTTP/1.1\r\nHost: x\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["silent", "slow-head", "kept-alive"],
)
def test_idle_and_slow_connections_are_closed(server, sent):
    port = server[0].base_url.port
    start = time.perf_counter()
    raw_exchange(port, sent, wait=LIMITS.timeout_keep_alive + 4)
    assert time.perf_counter() - start < LIMITS.timeout_keep_alive + 2


def test_health_answers_while_a_large_request_is_tokenized(scorer):
    """Tokenization runs off the event loop: /health stays fast while a multi-megabyte request is prepared."""
    roomy = ServeLimits(
        max_items=64, max_chars=200_000, max_request_chars=10**7, max_body_bytes=32 * 2**20, max_batch_size=4
    )
    text = "A long answer about bread and patience, sentence after sentence. " * 3000  # ~200k characters
    with (
        running(create_app(scorer, roomy), roomy) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):
        big = threading.Thread(
            target=lambda: client.post("/get_reward", json={"query": [text] * 32}).raise_for_status()
        )
        latencies = []
        big.start()
        while big.is_alive():
            start = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
        big.join()
    assert len(latencies) >= 5  # the large request took long enough for the probes to mean something
    assert max(latencies) < 0.5, latencies


def test_create_app_refuses_an_empty_key(scorer):
    with pytest.raises(ValueError, match="empty"):
        create_app(scorer, api_key="")


def test_public_name_is_the_folder_name_only(tmp_path):
    assert public_name(tmp_path / "outputs" / "haf") == "haf"


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--api-key", ""], {}, "API key is empty"),
        ([], {"HAFRM_API_KEY": ""}, "API key is empty"),
        (["--api-key", "  "], {}, "API key is empty"),
        (["--host", "0.0.0.0"], {}, "without an API key"),
        (["--no-auth", "--api-key", "k"], {}, "--no-auth contradicts"),
    ],
)
def test_serve_refuses_an_open_service_by_accident(argv, env, message, monkeypatch, capsys):
    """Checked before the model is loaded: the model folder need not even exist."""
    monkeypatch.delenv("HAFRM_API_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "no-such-model", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "99999"],
        ["--port", "0"],
        ["--max-batch-size", "0"],
        ["--max-items", "-1"],
        ["--body-timeout", "nan"],
        ["--max-length", "x"],
        ["--max-length", "7"],
    ],
)
def test_serve_rejects_bad_numbers_with_one_error_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "no-such-model", *argv])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and argv[0] in errors[0] and "Traceback" not in errors[0]


@pytest.mark.parametrize(
    "argv, env, api_key",
    [
        (["--host", "0.0.0.0", "--no-auth"], {}, None),
        ([], {}, None),
        ([], {"HAFRM_API_KEY": "k"}, "k"),
        (["--host", "0.0.0.0", "--api-key", "k2"], {"HAFRM_API_KEY": "k"}, "k2"),
    ],
)
def test_serve_starts_with_a_key_on_loopback_or_with_no_auth(argv, env, api_key, monkeypatch):
    import hafrm.serve.server

    started = {}
    monkeypatch.delenv("HAFRM_API_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(
        hafrm.serve.server,
        "serve",
        lambda model_dir, host, port, key, limits, max_length, *rest: started.update(key=key, limits=limits),
    )
    assert main(["serve", "model", "--body-timeout", "3", *argv]) == 0
    assert started["key"] == api_key and started["limits"].body_timeout == 3.0
