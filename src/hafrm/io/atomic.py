"""Files written whole: into a temporary file beside the target, then renamed over it (atomic on POSIX), so a kill
or a crash never leaves half a file, and a reader sees the old file or the new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """write(temporary) fills a temporary file (hidden, named by process, so concurrent writers never share one),
    which then replaces `path`; if write fails, the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
