"""Training checkpoints that survive a crash at any moment and never execute code when read.

A checkpoint is a directory::

    model.safetensors    the method's weights (the same files `build_method(checkpoint=...)`
    method.json          loads, so `checkpoints/best` is directly usable for evaluation)
    trainer.safetensors  every tensor of the optimiser, scheduler, grad scaler and RNG states
    trainer.json         the rest of that state as JSON, with each tensor replaced by its key
    manifest.json        size and SHA-256 of each file above; written last

It is written into a temporary sibling, every file fsync'ed, then renamed into place, so a
reader sees the old checkpoint or the new one, never a mix. A checkpoint without its
manifest, or whose files do not match it, is reported as partial or corrupt. Nothing is
unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refground.errors import RefgroundError

MANIFEST = "manifest.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"


class CheckpointError(RefgroundError):
    """A checkpoint is missing, partial or corrupt."""


# --- state <-> (JSON skeleton, tensors) --------------------------------------------------------


def split_state(obj: Any, tensors: dict[str, Tensor], path: str = "s") -> Any:
    """Replace every tensor / array in a nested state by a reference, collecting the tensors.

    Dicts keep non-string keys (optimizer states are keyed by int), tuples stay tuples, so
    :func:`join_state` gives back an object equal to the original.
    """
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[key, split_state(value, tensors, f"{path}.{i}")]
                             for i, (key, value) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path})")


def join_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`split_state`."""
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    try:
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy().astype(skeleton["dtype"])
        if "__tuple__" in skeleton:
            return tuple(join_state(v, tensors) for v in skeleton["__tuple__"])
        return {_key(k): join_state(v, tensors) for k, v in skeleton["__dict__"]}
    except KeyError as exc:
        raise CheckpointError(f"checkpoint state refers to a missing tensor {exc}") from None


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# --- files -----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: Path, write_model: Any, state: dict[str, Any]) -> Path:
    """Atomically (re)place ``directory`` with a checkpoint of ``state``.

    ``write_model(tmp_dir)`` writes the method's own files (``save_pretrained``); ``state`` is
    the trainer's nested state (optimiser, scheduler, RNG, counters, config).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp)
    tensors: dict[str, Tensor] = {}
    skeleton = split_state(state, tensors)
    save_file(tensors, str(tmp / TRAINER_TENSORS))
    (tmp / TRAINER_JSON).write_text(json.dumps(skeleton), encoding="utf-8")
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    for path in files:
        _fsync(path)
    manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync(tmp / MANIFEST)
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _fsync_dir(path: Path) -> None:
    # some filesystems refuse to open directories; the rename has happened either way
    with contextlib.suppress(OSError):
        _fsync(path)


def resolve_checkpoint(directory: Path) -> Path:
    """The checkpoint to read: ``directory``, or the ``.old`` copy a crash mid-rename left."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and (old / MANIFEST).is_file():
        return old
    return directory


def verify_checkpoint(directory: Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches the manifest."""
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is partial: {MANIFEST} is missing (the "
                              "run was interrupted while writing it); use an older checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is corrupt ({exc})") from None
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is partial: {name} is missing")
        size = path.stat().st_size
        if size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: {name} has {size} bytes and does not match "
                f"the checksum recorded when it was written ({expected['bytes']} bytes)")


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """The verified trainer state of a checkpoint (the model is loaded by the method)."""
    from safetensors.torch import load_file

    verify_checkpoint(directory)
    # copies, not views of the memory-mapped file, which a later save replaces
    tensors = {k: v.clone() for k, v in load_file(str(directory / TRAINER_TENSORS)).items()}
    skeleton = json.loads((directory / TRAINER_JSON).read_text(encoding="utf-8"))
    return join_state(skeleton, tensors)
