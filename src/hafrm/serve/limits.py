"""The reward service's limits (`hafrm serve --help` shows their defaults), apart from the server so that reading
them needs neither FastAPI nor uvicorn."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeLimits:
    max_items: int = 256  # items per request
    max_chars: int = 100_000  # characters per text field
    max_request_chars: int = 1_000_000  # characters of all a request's texts, messages joined
    max_body_bytes: int = 4 * 2**20
    max_concurrent: int = 8  # requests admitted at once, in flight and queued together
    max_batch_size: int = 16  # sequences per forward pass
    max_wait_ms: float = 10.0
    body_timeout: float = 10.0  # seconds to receive a whole request body
    timeout_keep_alive: float = 5.0  # seconds a connection may wait without a complete request head
