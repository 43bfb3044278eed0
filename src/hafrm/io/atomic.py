"""Files and folders written whole: into a temporary file or a staging folder beside the target, then renamed over
it (atomic on POSIX), so a kill or a crash never leaves half a file, and a reader sees the old one or the new one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def is_write_failure(error: BaseException) -> bool:
    """An error that means a file could not be written (a full disk, a quota, an I/O error), as the libraries that
    write our files raise it: OSError from Python, SafetensorError from safetensors, RuntimeError from torch.save."""
    text = str(error)
    return (
        isinstance(error, OSError)
        or (type(error).__name__ == "SafetensorError" and ("IoError" in text or "os error" in text.lower()))
        or (isinstance(error, RuntimeError) and ("file write failed" in text or "PytorchStreamWriter" in text))
    )


def newest_file(folder: Path) -> Path | None:
    """The file last written under folder: after a failed write, the one that was cut off."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    return max(files, key=lambda path: path.stat().st_mtime_ns) if files else None


@contextmanager
def write_errors_named(folder: str | Path, what: str, shown_as: str | Path | None = None) -> Iterator[None]:
    """Within the block a failed write is re-raised as one OSError naming the file that was being written under
    `folder` (its newest; shown under `shown_as` in place of folder, for a staging folder) and the cause, e.g. a
    full disk; other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if not is_write_failure(error):
            raise
        folder = Path(folder)
        newest = newest_file(folder) if folder.is_dir() else None
        where = Path(shown_as or folder) / newest.relative_to(folder) if newest is not None else folder
        cause = " ".join(str(error).split())[:300]
        failure = OSError(f"could not write {what} ({where}): {cause}")
        failure.errno = getattr(error, "errno", None)
        raise failure from None


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


@contextmanager
def staged_parts(output_dir: str | Path, record: str) -> Iterator[Path]:
    """Within the block the caller writes the parts of an export (folders and files) into the staging folder it is
    given, inside output_dir; when the block ends they replace output_dir's parts of the same names, one rename each.
    The record file (the mark of a finished export, which the caller writes after the block) is removed first, so
    a reader never finds it beside parts of another export; if the block fails, nothing is moved and the staging
    folder is removed."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / record).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".staging-"))
    try:
        with write_errors_named(staging, f"the export in {output_dir}", shown_as=output_dir):
            yield staging
        for part in sorted(staging.iterdir()):
            target = output_dir / part.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(part, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
