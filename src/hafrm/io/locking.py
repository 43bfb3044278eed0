"""One writer per output folder: a lock file naming the host and process that holds it.

Two runs into one folder would interleave their checkpoints and exports and both exit 0. The first takes the lock
(created exclusively); a second is refused in one line naming the holder. A lock whose process is gone from this
host is taken over with a warning, so a killed run never blocks the folder. Under torchrun or accelerate only the
main process (RANK 0) takes it: the other ranks write nothing of their own there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hafrm.io.filechecks import check_writable_dir

logger = logging.getLogger(__name__)
LOCK_FILE = ".hafrm.lock"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record; None where it is unreadable (being written this instant, or broken)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _take(path: Path, mine: dict) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(mine))
    return True


@contextmanager
def output_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold output_dir's lock within the block (see the module docstring); raises ValueError if another live
    process holds it. A folder made here that is still empty at the end (a run refused at once) is removed."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    folder = Path(output_dir).expanduser()
    check_writable_dir(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for _ in range(20):
        if _take(path, mine):
            break
        holder = _holder(path)
        if holder is None:  # its writer may be between creating and filling it
            time.sleep(0.05)
            if _holder(path) is None and path.exists():
                logger.warning("Taking over %s: it is empty or unreadable", path)
                path.unlink(missing_ok=True)
            continue
        if holder.get("host") == mine["host"] and not process_alive(holder["pid"]):
            logger.warning("Taking over %s from process %d, which is gone", path, holder["pid"])
            path.unlink(missing_ok=True)
            continue
        raise ValueError(
            f"output folder {folder} is in use by process {holder['pid']} on {holder.get('host')} since "
            f"{holder.get('since')}; wait for that run to end or give another output folder (a lock of a process "
            f"that is gone from this host is taken over; for another host's, remove {path} once its run is over)"
        )
    else:
        raise ValueError(f"could not take the lock {path}: it keeps changing hands")
    try:
        yield
    finally:
        if _holder(path) == mine:
            path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):  # a run refused before writing anything leaves no folder
            folder.rmdir()
