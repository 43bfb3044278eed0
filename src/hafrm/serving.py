"""`hafrm serve`: an HTTP reward service (FastAPI) with dynamic batching.

Endpoints:
  GET  /health        liveness and the model being served
  POST /score         {"items": [{"prompt", "response"}]}            -> {"rewards": [...]}
  POST /compare       {"items": [{"prompt", "response_a", "response_b"}]} -> rewards and P(a preferred)
  POST /get_reward    OpenRLHF remote reward model: {"query": [formatted texts]} -> {"rewards", "scores"}

Requests from many clients are gathered for up to max_wait_ms into batches of up to max_batch_size
sequences, so concurrent RLHF workers share forward passes. Limits answer 413/422, a wrong or missing
bearer token 401; a bad request never takes the service down.
"""

from __future__ import annotations

import asyncio
import hmac
import math
from dataclasses import dataclass

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from hafrm.scoring import RewardScorer


@dataclass
class ServeLimits:
    max_items: int = 256  # items per request
    max_chars: int = 100_000  # characters per text field
    max_body_bytes: int = 16 * 2**20
    max_batch_size: int = 16  # sequences per forward pass
    max_wait_ms: float = 10.0


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


class DynamicBatcher:
    """Collects concurrent requests into batches and scores them in a worker thread."""

    def __init__(self, scorer: RewardScorer, limits: ServeLimits):
        self.scorer = scorer
        self.limits = limits
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def score(self, sequences: list[list[int]]) -> list[float]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((sequences, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            count = len(waiting[0][0])
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while count < self.limits.max_batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
                count += len(waiting[-1][0])
            sequences = [s for request, _ in waiting for s in request]
            try:
                rewards = await asyncio.to_thread(self.scorer.score_ids, sequences, self.limits.max_batch_size)
            except Exception as error:  # a failed batch fails its requests, not the service
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for request, future in waiting:
                if not future.done():
                    future.set_result(rewards[start : start + len(request)])
                start += len(request)


def create_app(scorer: RewardScorer, limits: ServeLimits | None = None, api_key: str | None = None, model_name: str = "") -> FastAPI:
    limits = limits or ServeLimits()
    batcher = DynamicBatcher(scorer, limits)

    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="hafrm reward service", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return JSONResponse({"detail": f"request body over {limits.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def check(texts: list[str], items: int) -> None:
        if items > limits.max_items:
            raise HTTPException(413, f"{items} items; at most {limits.max_items} per request")
        longest = max((len(t) for t in texts), default=0)
        if longest > limits.max_chars:
            raise HTTPException(413, f"a text of {longest} characters; at most {limits.max_chars}")

    def prompt_texts(prompt) -> list[str]:
        return [prompt] if isinstance(prompt, str) else [m.get("content", "") for m in prompt]

    def encode(prompt, response: str) -> list[int]:
        try:
            return scorer.encode(prompt, response)
        except ValueError as error:  # e.g. malformed chat messages
            raise HTTPException(422, str(error)) from error

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.post("/score", dependencies=[Depends(authorize)])
    async def score(body: ScoreRequest):
        check([t for i in body.items for t in prompt_texts(i.prompt) + [i.response]], len(body.items))
        rewards = await batcher.score([encode(i.prompt, i.response) for i in body.items])
        return {"rewards": rewards}

    @app.post("/compare", dependencies=[Depends(authorize)])
    async def compare(body: CompareRequest):
        check([t for i in body.items for t in prompt_texts(i.prompt) + [i.response_a, i.response_b]], 2 * len(body.items))
        sequences = [encode(i.prompt, r) for i in body.items for r in (i.response_a, i.response_b)]
        rewards = await batcher.score(sequences)
        pairs = list(zip(rewards[0::2], rewards[1::2]))
        return {
            "reward_a": [a for a, _ in pairs],
            "reward_b": [b for _, b in pairs],
            "prob_a_preferred": [1 / (1 + math.exp(b - a)) for a, b in pairs],
        }

    @app.post("/get_reward", dependencies=[Depends(authorize)])
    async def get_reward(body: OpenRLHFRequest):
        check(body.query, len(body.query))
        rewards = await batcher.score([scorer.encode_text(q) for q in body.query])
        return {"rewards": rewards, "scores": rewards}

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, limits: ServeLimits | None = None, max_length: int = 512) -> None:
    import uvicorn

    app = create_app(RewardScorer(model_dir, max_length=max_length), limits, api_key, model_name=str(model_dir))
    uvicorn.run(app, host=host, port=port, log_level="info")
