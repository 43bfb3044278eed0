"""Whether a model folder's own Python code may run: its config, tokenizer or model classes named in an auto_map.

Every load passes the answer to transformers explicitly: left unset, transformers asks on standard input, and a
"y" there runs the code. Off unless the user turns it on (`--trust-remote-code`, `trust_remote_code: true`), for the
whole process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)
_REMOTE_CODE = {"trusted": False}


def trust_remote_code(trusted: bool) -> None:
    """Let model folders run their own code (True, logged as a warning) or not (False, the default)."""
    if trusted:
        logger.warning("trust_remote_code is on: model folders given to this run may execute their own Python code")
    _REMOTE_CODE["trusted"] = trusted


def remote_code_trusted() -> bool:
    return _REMOTE_CODE["trusted"]


@contextmanager
def remote_code_refused(path: str) -> Iterator[None]:
    """A folder that needs its own code, while that is not trusted, is one line naming the flag."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error) or remote_code_trusted():
            raise
        raise ValueError(
            f"{path} needs its own Python code to load (an auto_map in its config or tokenizer config); hafrm runs "
            "such code only with --trust-remote-code (trust_remote_code: true), for folders you trust"
        ) from None
