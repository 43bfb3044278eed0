"""The reward service: a real uvicorn server on loopback, called with a real HTTP client."""

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from hafrm.scoring import RewardScorer
from hafrm.serving import ServeLimits, create_app

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def served_model(tiny_model_dir, tokenizer, tmp_path_factory):
    """Export the tiny model as a hafrm output folder."""
    from conftest import tiny_causal_lm
    from hafrm.model import HybridRewardModel

    folder = tmp_path_factory.mktemp("served")
    HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer)), tokenizer.pad_token_id).export(folder, tokenizer, {})
    return folder


@pytest.fixture(scope="module")
def server(served_model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scorer = RewardScorer(served_model, max_length=128)
    app = create_app(scorer, ServeLimits(max_items=8, max_chars=2000, max_body_bytes=50_000, max_batch_size=4, max_wait_ms=20), api_key=TOKEN)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    yield client, scorer
    client.close()
    instance.should_exit = True
    thread.join(timeout=10)


def test_health_and_score_match_direct_scoring(server):
    client, scorer = server
    assert client.get("/health").json()["status"] == "ok"
    items = [{"prompt": "How do I bake bread?", "response": "Knead and bake."}, {"prompt": "Hi", "response": "Hello there"}]
    rewards = client.post("/score", json={"items": items}).json()["rewards"]
    assert rewards == pytest.approx(scorer.score([i["prompt"] for i in items], [i["response"] for i in items]), rel=1e-5)


def test_compare_and_openrlhf_endpoint(server):
    client, scorer = server
    answer = client.post("/compare", json={"items": [{"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away."}]}).json()
    a, b = answer["reward_a"][0], answer["reward_b"][0]
    assert answer["prob_a_preferred"][0] == pytest.approx(1 / (1 + pow(2.718281828459045, b - a)), rel=1e-6)
    text = scorer.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tokenize=False)
    openrlhf = client.post("/get_reward", json={"query": [text], "prompts": ["Hi"]}).json()
    assert openrlhf["rewards"] == pytest.approx([a], rel=1e-5) and openrlhf["scores"] == openrlhf["rewards"]


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


def test_bearer_token_is_required(server):
    client, _ = server
    anonymous = httpx.post(f"{client.base_url}/score", json={"items": [{"prompt": "q", "response": "r"}]})
    assert anonymous.status_code == 401
    wrong = httpx.post(f"{client.base_url}/score", json={"items": [{"prompt": "q", "response": "r"}]}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
