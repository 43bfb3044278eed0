"""`hafrm serve`: an HTTP reward service (FastAPI) with dynamic batching.

Endpoints:
  GET  /health        liveness and the model folder's name
  GET  /metrics       request counters: admitted, refused as busy, cancelled (client gone), failed
  POST /score         {"items": [{"prompt", "response"}]}            -> {"rewards": [...]}
  POST /compare       {"items": [{"prompt", "response_a", "response_b"}]} -> rewards and P(a preferred)
  POST /get_reward    OpenRLHF remote reward model: {"query": [formatted texts]} -> {"rewards", "scores"}

Requests from many clients are gathered for up to max_wait_ms into batches of up to max_batch_size
sequences, so concurrent RLHF workers share forward passes. No request can fail another:

- every request is parsed, checked and tokenized on its own, in a worker thread (the event loop only
  moves bytes, so /health answers while a large request is tokenized), before it joins a batch;
- a batch whose forward pass fails is retried request by request, so only the request at fault fails;
- `RequestGuard` checks the bearer token before a byte of the body is read (401), admits at most
  max_concurrent requests at once (in flight and queued together; over it 503 with Retry-After, before the body
  is read), then reads the body with a size cap (413) and a deadline (408), chunked bodies included;
- a request's texts are capped one by one (max_chars) and together, messages joined (max_request_chars), and
  JSON nested deeper than the decoder's recursion limit is a 422, so every check is linear in the request's size;
- a request whose client hangs up is dropped before it is scored (counted as cancelled);
- a connection that sends no complete request head within timeout_keep_alive is closed;
- without an API key on a loopback host, a request must name a loopback Host, carry no browser Origin and send
  application/json: a web page cannot reach the service (CSRF, DNS rebinding).

Every path except /health needs the token when an API key is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field, ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

from hafrm.eval.scoring import RewardScorer
from hafrm.serve.limits import ServeLimits

logger = logging.getLogger("hafrm.serve")

OPEN_PATHS = ("/health",)


class ScoreItem(BaseModel):
    prompt: str | list[dict[str, str]]
    response: str


class CompareItem(BaseModel):
    prompt: str | list[dict[str, str]]
    response_a: str
    response_b: str


class ScoreRequest(BaseModel):
    items: list[ScoreItem] = Field(min_length=1)


class CompareRequest(BaseModel):
    items: list[CompareItem] = Field(min_length=1)


class OpenRLHFRequest(BaseModel):
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list | None = None


def resolve_api_key(api_key: str | None, no_auth: bool, host: str) -> str | None:
    """The key to require, or None; raises ValueError for a setup that would be open by accident.

    An empty key (typically `--api-key "$KEY"` with KEY unset) is refused rather than read as "no auth".
    Without a key the service starts only on a loopback host, where only local processes can reach it,
    or with an explicit no_auth.
    """
    if api_key is not None and not api_key.strip():
        raise ValueError(
            "the API key is empty (is the variable holding it unset?); give a key, or --no-auth to serve without one"
        )
    if api_key is not None and no_auth:
        raise ValueError("--no-auth contradicts the API key given (--api-key or HAFRM_API_KEY)")
    if api_key is None and not no_auth and not is_loopback(host):
        raise ValueError(
            f"refusing to serve {host} without an API key: give --api-key (or HAFRM_API_KEY), "
            "or --no-auth to serve it open"
        )
    return api_key


def is_loopback(host: str) -> bool:
    """Only local processes can reach a loopback host; a host name other than localhost is not trusted as one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


class RequestTooLarge(Exception):
    """The body (declared or received so far) is over max_body_bytes."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


class RequestGuard:
    """Pure ASGI middleware that owns the receive channel: origin checks (keyless loopback mode), the token,
    admission, then a bounded, timed body read.

    Checking the token and admitting before reading means no client can make the server buffer more than
    max_concurrent bodies; counting bytes as they arrive enforces max_body_bytes on chunked bodies, which have no
    Content-Length. The body is handed on whole, so the app never waits on a slow client.
    """

    def __init__(self, app, limits: ServeLimits, api_key: str | None, counters: dict, local_only: bool = False):
        self.app = app
        self.limits = limits
        self.key_digest = None if api_key is None else hashlib.sha256(api_key.encode()).digest()
        self.counters = counters
        self.local_only = local_only
        self.admitted = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.local_only and (refusal := browser_refusal(scope)):
            return await send_error(send, *refusal)
        if scope["path"] not in OPEN_PATHS and not self.authorized(scope):
            return await send_error(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
        if scope["method"] != "POST":  # /health, /metrics: nothing to read or score, never refused as busy
            return await self.app(scope, receive, send)
        if self.admitted >= self.limits.max_concurrent:
            self.counters["refused_busy"] += 1
            return await send_error(
                send, 503, f"busy: {self.admitted} requests in progress; retry shortly", [(b"retry-after", b"1")]
            )
        self.admitted += 1
        self.counters["admitted"] += 1
        try:
            try:
                body = await asyncio.wait_for(self.read_body(scope, receive), self.limits.body_timeout)
            except RequestTooLarge:
                return await send_error(send, 413, f"request body over {self.limits.max_body_bytes} bytes")
            except asyncio.TimeoutError:
                return await send_error(send, 408, f"request body not received within {self.limits.body_timeout} s")
            except ClientGone:
                return None
            await self.app(scope, replay(body, receive), send)
        finally:
            self.admitted -= 1

    def authorized(self, scope) -> bool:
        """A case-insensitive Bearer scheme and the key, compared in constant time (digests hide the length)."""
        if self.key_digest is None:
            return True
        scheme, _, token = header(scope, b"authorization").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self.key_digest)

    async def read_body(self, scope, receive) -> bytes:
        declared = header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestTooLarge
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limits.max_body_bytes:
                raise RequestTooLarge
            if not message.get("more_body", False):
                return b"".join(chunks)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def browser_refusal(scope) -> tuple[int, str] | None:
    """Why a keyless loopback service refuses this request, if it does: a Host that is not a loopback name (DNS
    rebinding), a browser's Origin (a page of another site), or a body that is not application/json (a form a
    page may post without asking)."""
    host = header(scope, b"host").decode("latin-1")
    name = (
        host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    )
    if name not in LOOPBACK_NAMES:
        return 421, "without an API key this service answers only a loopback Host (localhost, 127.0.0.1, [::1])"
    if header(scope, b"origin"):
        return 403, "without an API key this service answers no browser page (the request carries an Origin)"
    kind = header(scope, b"content-type").split(b";")[0].strip().lower()
    if scope["method"] == "POST" and kind != b"application/json":
        return 415, "the body must be sent as application/json"
    return None


def header(scope, name: bytes) -> bytes:
    return next((value for key, value in scope["headers"] if key == name), b"")


def replay(body: bytes, receive):
    """A receive channel that yields the body already read, then passes on (e.g. a later disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_replayed():
        return pending.pop() if pending else await receive()

    return receive_replayed


async def send_error(send, status: int, detail: str, headers: list | None = None) -> None:
    """A JSON error that also closes the connection: the rest of an unread body is never read."""
    body = json.dumps({"detail": detail}).encode()
    fixed = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": fixed + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class DynamicBatcher:
    """Collects concurrent requests into shared forward passes, run one at a time in a worker thread.

    A batch that fails is retried request by request, so a failure reaches only the request that caused it.
    """

    def __init__(self, scorer: RewardScorer, limits: ServeLimits):
        self.scorer = scorer
        self.limits = limits
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hafrm-forward")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False)

    async def score(self, sequences: list[list[int]]) -> list[float]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((sequences, future))
        return await future

    async def _loop(self) -> None:
        while True:
            waiting = [(request, future) for request, future in await self._gather() if not future.done()]
            if waiting:
                await self._run(waiting)

    async def _gather(self) -> list:
        """The first waiting request, plus those arriving within max_wait_ms while the batch has room."""
        loop = asyncio.get_running_loop()
        waiting = [await self.queue.get()]
        count = len(waiting[0][0])
        deadline = loop.time() + self.limits.max_wait_ms / 1000
        while count < self.limits.max_batch_size and (remaining := deadline - loop.time()) > 0:
            try:
                waiting.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
            count += len(waiting[-1][0])
        return waiting

    async def _run(self, waiting: list) -> None:
        sequences = [s for request, _ in waiting for s in request]
        try:
            rewards = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.scorer.score_ids, sequences, self.limits.max_batch_size
            )
        except Exception as error:
            if len(waiting) > 1:  # find the request at fault: each one alone
                for one in waiting:
                    await self._run([one])
                return
            logger.exception("scoring a request of %d sequences failed", len(sequences))
            if not waiting[0][1].done():
                waiting[0][1].set_exception(error)
            return
        start = 0
        for request, future in waiting:
            if not future.done():
                future.set_result(rewards[start : start + len(request)])
            start += len(request)


class Preparer:
    """Turns a raw request body into token sequences, or a 422/413 for that request alone.

    Runs in a worker thread: JSON parsing, checks and tokenization are CPU work that must not hold the loop.
    """

    def __init__(self, scorer: RewardScorer, limits: ServeLimits):
        self.scorer = scorer
        self.limits = limits

    def score(self, body: bytes) -> list[list[int]]:
        request = parse(ScoreRequest, body)
        self.check_count(len(request.items))
        texts = [
            (f"items[{n}]", prompt_texts(i.prompt) + [("response", i.response)]) for n, i in enumerate(request.items)
        ]
        self.check_request(texts)
        return [self.encode(f"items[{n}]", item.prompt, item.response) for n, item in enumerate(request.items)]

    def compare(self, body: bytes) -> list[list[int]]:
        """Sequences a0, b0, a1, b1, ..."""
        request = parse(CompareRequest, body)
        self.check_count(2 * len(request.items))
        self.check_request(
            [
                (f"items[{n}]", prompt_texts(i.prompt) + [("response_a", i.response_a), ("response_b", i.response_b)])
                for n, i in enumerate(request.items)
            ]
        )
        return [
            self.encode(f"items[{n}]", item.prompt, r)
            for n, item in enumerate(request.items)
            for r in (item.response_a, item.response_b)
        ]

    def get_reward(self, body: bytes) -> list[list[int]]:
        request = parse(OpenRLHFRequest, body)
        self.check_count(len(request.query))
        self.check_request([("query", [(f"[{n}]", q) for n, q in enumerate(request.query)])])
        return [
            self.nonempty(f"query[{n}]", self.guarded(self.scorer.encode_text, q)) for n, q in enumerate(request.query)
        ]

    def check_count(self, items: int) -> None:
        if items > self.limits.max_items:
            raise HTTPException(413, f"{items} items; at most {self.limits.max_items} per request")

    def check_request(self, groups: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """Every text checked (`check_texts`) and all of them together within max_request_chars."""
        total = 0
        for where, texts in groups:
            self.check_texts(where, texts)
            total += sum(len(text) for _, text in texts)
        if total > self.limits.max_request_chars:
            raise HTTPException(
                413, f"{total} characters in the request's texts; at most {self.limits.max_request_chars}"
            )

    def check_texts(self, where: str, texts: list[tuple[str, str]]) -> None:
        """Every text non-blank (a blank one has nothing to score), within max_chars, and valid Unicode."""
        for name, text in texts:
            if not text.strip():
                raise HTTPException(422, f"{where}.{name}: empty text")
            if len(text) > self.limits.max_chars:
                raise HTTPException(413, f"{where}.{name}: {len(text)} characters; at most {self.limits.max_chars}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise HTTPException(422, f"{where}.{name}: not valid Unicode (a lone surrogate escape)") from None

    def encode(self, where: str, prompt, response: str) -> list[int]:
        return self.nonempty(where, self.guarded(self.scorer.encode, prompt, response))

    @staticmethod
    def guarded(encode, *args) -> list[int]:
        try:
            return encode(*args)
        except ValueError as error:  # DataError included: e.g. malformed chat messages
            raise HTTPException(422, str(error)) from error

    @staticmethod
    def nonempty(where: str, ids: list[int]) -> list[int]:
        """A sequence of no tokens cannot be scored (it would break or silently zero a whole batch)."""
        if not ids:
            raise HTTPException(422, f"{where}: encodes to no tokens")
        return ids


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Strict JSON (no NaN/Infinity) validated against model; errors never echo the input back."""
    try:
        data = json.loads(body, parse_constant=reject_constant)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError included
        raise HTTPException(422, f"body is not valid JSON: {error}") from None
    except RecursionError:  # the decoder recurses once per level: a deep body is refused, not a crash
        raise HTTPException(422, "body nests JSON too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise HTTPException(422, error.errors(include_url=False, include_input=False, include_context=False)) from None


def reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def prompt_texts(prompt) -> list[tuple[str, str]]:
    if isinstance(prompt, str):
        return [("prompt", prompt)]
    return [(f"prompt[{n}].content", m.get("content", "")) for n, m in enumerate(prompt)]


def create_app(
    scorer: RewardScorer,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    model_name: str = "",
    local_only: bool = False,
) -> RequestGuard:
    """The service as an ASGI app: the FastAPI routes inside a RequestGuard. An empty api_key is refused.
    local_only: keyless on a loopback host, so browser pages are refused (`browser_refusal`)."""
    limits = limits or ServeLimits()
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty")
    batcher = DynamicBatcher(scorer, limits)
    prepare = Preparer(scorer, limits)
    counters = dict.fromkeys(("admitted", "refused_busy", "cancelled_client_gone", "failed"), 0)

    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="hafrm reward service", lifespan=lifespan)

    async def rewards_for(request: Request, prepare_body, item_name) -> list[float] | None:
        """The request's rewards, or None if its client hung up first (then nothing of it is scored)."""
        sequences = await asyncio.to_thread(prepare_body, await request.body())
        scoring = asyncio.ensure_future(batcher.score(sequences))
        gone = asyncio.ensure_future(client_gone(request))
        await asyncio.wait({scoring, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not scoring.done():  # the batcher skips a request whose future is cancelled
            scoring.cancel()
            counters["cancelled_client_gone"] += 1
            return None
        gone.cancel()
        try:
            rewards = scoring.result()
        except Exception as error:
            counters["failed"] += 1
            raise HTTPException(500, f"scoring failed: {type(error).__name__}") from error
        bad = next((n for n, reward in enumerate(rewards) if not math.isfinite(reward)), None)
        if bad is not None:
            counters["failed"] += 1
            raise HTTPException(500, f"{item_name(bad)}: the model's reward is not finite ({rewards[bad]})")
        return rewards

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/metrics")
    async def metrics():
        return {**counters, "in_progress": guard.admitted}

    @app.post("/score")
    async def score(request: Request):
        rewards = await rewards_for(request, prepare.score, lambda n: f"items[{n}]")
        return {"rewards": rewards} if rewards is not None else CLIENT_GONE

    @app.post("/compare")
    async def compare(request: Request):
        rewards = await rewards_for(request, prepare.compare, lambda n: f"items[{n // 2}].response_{'ab'[n % 2]}")
        if rewards is None:
            return CLIENT_GONE
        pairs = list(zip(rewards[0::2], rewards[1::2]))
        return {
            "reward_a": [a for a, _ in pairs],
            "reward_b": [b for _, b in pairs],
            "prob_a_preferred": [sigmoid(a - b) for a, b in pairs],
        }

    @app.post("/get_reward")
    async def get_reward(request: Request):
        rewards = await rewards_for(request, prepare.get_reward, lambda n: f"query[{n}]")
        return {"rewards": rewards, "scores": rewards} if rewards is not None else CLIENT_GONE

    guard = RequestGuard(app, limits, api_key, counters, local_only)
    return guard


CLIENT_GONE = Response(status_code=499)  # nginx's "client closed request": nobody is there to read it


async def client_gone(request: Request) -> None:
    """Returns once the client has disconnected (polled: a request whose body is read has nothing else to say)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow for any finite x."""
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol that also closes a connection sending no complete request head in time.

    uvicorn times out only a kept-alive connection that stays silent; a fresh connection that sends
    nothing, or dribbles its headers, would stay open forever. The deadline (timeout_keep_alive) starts
    when the connection opens and after each response; a new request (a new cycle) disarms it.
    """

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_deadline = None
        self._arm_head_deadline(None)

    def on_response_complete(self) -> None:
        finished = self.cycle  # captured first: the call below may already start a pipelined request
        super().on_response_complete()
        self._arm_head_deadline(finished)

    def _arm_head_deadline(self, cycle) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._close_if_no_new_request, cycle)

    def _close_if_no_new_request(self, cycle) -> None:
        if self.cycle is cycle and not self.transport.is_closing():
            self.transport.close()


def public_name(model_dir: str | Path) -> str:
    """The model folder's own name: /health must not tell anyone where the server's files live."""
    return Path(model_dir).resolve().name


def server_config(app, host: str, port: int, limits: ServeLimits, log_level: str = "info"):
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=HeadTimeoutProtocol,
        timeout_keep_alive=limits.timeout_keep_alive,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with SIGHUP handled as SIGTERM is: the requests in flight finish, then it exits (SIGHUP's
    default would end the process at once, dropping them)."""

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
                yield
                return
            previous = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    max_length: int = 512,
    label_index: int | None = None,
    normalize: bool = False,
) -> None:
    """Serve until SIGINT, SIGTERM or SIGHUP, each of which drains the requests in flight first."""
    limits = limits or ServeLimits()
    scorer = RewardScorer(model_dir, max_length=max_length, label_index=label_index, normalize=normalize)
    local_only = api_key is None and is_loopback(host)
    app = create_app(scorer, limits, api_key, model_name=public_name(model_dir), local_only=local_only)
    DrainingServer(server_config(app, host, port, limits)).run()
