"""Cheap checks on files, run before anything heavy so that a user error costs seconds, not a run.

Each check reads as little as it can (a safetensors header, a zip directory, a folder's permissions)
and reports one line that names the file. `*_problem` functions return that line (None when the file
is fine) for callers that fall back to something else; `check_*` functions raise it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages often run to paragraphs)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file cannot be used (missing, header unreadable, shorter or longer than its header says)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    try:
        with safe_open(str(path), "pt"):  # validates the header and that the data covers the file exactly
            return None
    except Exception as error:  # SafetensorError, OSError
        return f"{path} is truncated or corrupt ({first_line(error)})"


def torch_file_problem(path: str | Path, numpy_allowed: bool = False) -> str | None:
    """Why `torch.load(path, weights_only=True)` would fail, checked without reading the tensors' data.

    numpy_allowed: allowlist the numpy types that transformers allows for its RNG state files.
    """
    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip whose directory is at the end: truncation loses it
        return f"{path} is truncated or not a torch file"
    try:
        if numpy_allowed:
            from transformers.trainer_pt_utils import safe_globals

            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # UnpicklingError for refused objects, RuntimeError for corrupt records
        return f"{path} cannot be loaded safely ({first_line(error)})"
    return None


def looks_like_path(name: str) -> bool:
    """True for names that can only be local paths; `owner/name` may be a hub model instead."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def check_model_folder(model: str) -> None:
    """A local model folder must exist and its safetensors files must be whole; hub names pass through."""
    folder = Path(model).expanduser()
    if not folder.exists():
        if looks_like_path(model):
            raise FileNotFoundError(f"model folder {model} does not exist")
        return
    if not folder.is_dir():
        raise ValueError(f"model {model} is a file; give the folder that holds config.json and the weights")
    for weights in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise ValueError(f"model weights {problem}")


def refuse_checkpoint(folder: str | Path) -> None:
    """A training checkpoint holds trainable state, not a model to score: say how to export it."""
    from hafrm.io.export import TRAINABLE_STATE_FILE

    if (Path(folder).expanduser() / TRAINABLE_STATE_FILE).is_file():
        raise ValueError(
            f"{folder} is a training checkpoint, not an exported model: export it with `hafrm export {folder} "
            "OUTPUT_DIR` and use OUTPUT_DIR"
        )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | Path, what: str = "output folder") -> None:
    """The folder exists and is writable, or can be created; raises before anything is written."""
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable (no write permission on {existing})")


def check_apart_from_data(output_dir: str | Path, data: list[str | None]) -> None:
    """An output folder that is a data folder, or inside one, is refused: what a run writes there (JSON records,
    checkpoints) would be read back as data by the next run."""
    output = Path(output_dir).expanduser().resolve()
    for source in data:
        folder = Path(source).expanduser() if source else None
        if folder is not None and folder.is_dir() and output.is_relative_to(folder.resolve()):
            raise ValueError(f"output folder {output_dir} is inside the data folder {source}: give another one")


def check_writable_file(path: str | Path, what: str = "output file") -> None:
    """The file can be written (its folder exists and is writable); raises before the work that fills it."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{what} {path} is not writable")
        return
    if not path.absolute().parent.is_dir():
        raise ValueError(f"{what} {path} cannot be written: folder {path.absolute().parent} does not exist")
    if not os.access(path.absolute().parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable (no write permission on {path.absolute().parent})")
