"""Frozen features computed once per dataset and read back instead of images.

A frozen backbone (a CLIP tower, MiniLM) gives the same outputs for the same inputs in every
epoch, yet the trainable methods ran it again in every step, on images decoded again from
PNG: on a GPU machine that left the accelerator 75-100% idle. A :class:`FeatureGroup` names
one table of such outputs -- patch tokens per image, embeddings per crop, pooled states per
text, a CNN's preprocessed pixels -- with everything its values depend on (``identity``:
model fingerprint, preprocessing). :func:`ensure_table` computes the rows a dataset needs in
batches, once, and stores them beside the dataset::

    <root>/<dataset>/features/<group>-<digest>.safetensors   # the rows, float16 by default
    <root>/<dataset>/features/<group>-<digest>.json          # manifest, written last

``digest`` hashes the group's identity and the dataset's annotation files, so another model,
another preprocessing or another version of the dataset is another file, never a silent
reuse. The manifest records the row keys, the file's size and SHA-256: a truncated or edited
file fails that check and is rebuilt (``ensure_table``) or refused (:meth:`FeatureTable.open`)
with the reason. Row keys name their inputs down to the image file's size (an image replaced
in place is a new key), and rows a later run needs that a cache lacks are computed and merged.

A :class:`FeatureTable` is what a DataLoader worker holds: a path and a key index, with the
tensors loaded on first use in each process (safetensors maps the file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from refground.errors import RefgroundError
from refground.types import Sample

logger = logging.getLogger(__name__)

CACHE_FORMAT = "refground-feature-cache-v1"
FEATURES_DIR = "features"


class FeatureCacheError(RefgroundError):
    """A feature cache that cannot be used as it is (truncated, foreign, incomplete)."""


@dataclass(frozen=True, eq=False)
class FeatureGroup:
    """One table of frozen features: string-keyed rows, named tensor columns.

    ``rows(samples)`` says which rows those samples need (key -> the payload ``compute``
    takes); ``compute(payloads)`` returns one tensor per column, a row per payload. Floating
    columns are stored as ``dtype``; a column whose second axis varies between batches (token
    states) is zero-padded to the longest.
    """

    name: str
    identity: Mapping[str, Any]
    rows: Callable[[Sequence[Any]], dict[str, Any]]
    compute: Callable[[list[Any]], dict[str, Tensor]]
    batch_size: int = 64
    dtype: torch.dtype = torch.float16

    def digest(self, dataset: str) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, "group": self.name, "dataset": dataset,
                           "dtype": str(self.dtype), "identity": self.identity},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- identities -------------------------------------------------------------------------------

def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, shapes, dtypes, bytes).

    Full, not sampled: a fine-tuned tower differs from its base in a few weights, and hashing
    even a ViT-B's 600 MB takes about a second once per cache check.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(files: Iterable[Path]) -> str:
    """SHA-256 over a dataset's annotation files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def image_row_key(path: Path) -> str:
    """A row key for an image file: its name and byte size (a replaced image is a new row)."""
    path = Path(path)
    return f"{path.name}:{path.stat().st_size}"


def image_row_keys(samples: Sequence[Sample]) -> list[str] | None:
    """The row keys of the samples' image files, or None when an image came without a file
    (given in memory): tables hold dataset images only, so such a batch is computed."""
    paths = [s.image_path for s in samples]
    if any(path is None for path in paths):
        return None
    return [image_row_key(path) for path in paths]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the table a collator reads ---------------------------------------------------------------

@dataclass(eq=False)
class FeatureTable:
    """Rows of one group, looked up by key; picklable (tensors load lazily per process)."""

    path: Path
    keys: dict[str, int]
    columns: tuple[str, ...]
    _tensors: dict[str, Tensor] | None = field(default=None, repr=False)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def has_all(self, keys: Iterable[str]) -> bool:
        return all(k in self.keys for k in keys)

    def tensors(self) -> dict[str, Tensor]:
        if self._tensors is None:
            from safetensors.torch import load_file

            self._tensors = load_file(str(self.path))
        return self._tensors

    def gather(self, keys: Sequence[str], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Each column's rows for ``keys`` in order; floating columns as ``dtype``."""
        index = torch.tensor([self.keys[k] for k in keys], dtype=torch.long)
        out = {}
        for name, tensor in self.tensors().items():
            rows = tensor.index_select(0, index)
            out[name] = rows.to(dtype) if rows.is_floating_point() else rows
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "keys": self.keys, "columns": self.columns, "_tensors": None}

    @classmethod
    def open(cls, path: Path) -> FeatureTable:
        """A table whose manifest and file agree; :class:`FeatureCacheError` says why not."""
        manifest = read_manifest(manifest_path(path))
        problem = file_problem(path, manifest)
        if problem:
            raise FeatureCacheError(f"feature cache {path} is unusable: {problem}; rebuild it "
                                    "with `refground cache-features` (or delete it)")
        return cls(path, {k: i for i, k in enumerate(manifest["keys"])},
                   tuple(manifest["columns"]))


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatureCacheError(f"{path} is missing (the cache was never completed)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeatureCacheError(f"{path} is not a readable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise FeatureCacheError(f"{path} is not a {CACHE_FORMAT} manifest")
    return manifest


def file_problem(path: Path, manifest: Mapping[str, Any]) -> str | None:
    """Why the table file does not match its manifest (None when it does)."""
    if not path.is_file():
        return "the tensor file is missing"
    size = path.stat().st_size
    if size != manifest.get("bytes"):
        return f"the tensor file has {size} bytes, its manifest says {manifest.get('bytes')}"
    if file_sha256(path) != manifest.get("sha256"):
        return "the tensor file's SHA-256 differs from its manifest's"
    return None


# --- building ---------------------------------------------------------------------------------

def ensure_table(group: FeatureGroup, items: Sequence[Any], directory: Path, dataset: str,
                 log: Callable[[str], None] = logger.info, progress: bool = False
                 ) -> FeatureTable:
    """The group's table under ``directory`` with every row ``items`` need, built if absent.

    A table that fails its manifest check, or belongs to other inputs, is rebuilt (the
    reason is logged); one that lacks rows gets them computed and merged.
    """
    wanted = group.rows(items)
    path = Path(directory) / f"{group.name}-{group.digest(dataset)}.safetensors"
    existing: dict[str, Tensor] = {}
    keys: list[str] = []
    if manifest_path(path).exists() or path.exists():
        try:
            table = FeatureTable.open(path)
        except FeatureCacheError as exc:
            log(f"rebuilding {path.name}: {exc}")
        else:
            if table.has_all(wanted):
                return table
            existing, keys = dict(table.tensors()), list(table.keys)
            log(f"{path.name}: adding {sum(k not in table for k in wanted)} rows")
    known = set(keys)
    missing = [k for k in wanted if k not in known]
    computed = compute_rows(group, [wanted[k] for k in missing], progress)
    merged = {name: pad_cat([existing[name], column]) if name in existing else column
              for name, column in computed.items()} if existing else computed
    return write_table(path, merged, keys + missing, group, dataset)


def compute_rows(group: FeatureGroup, payloads: list[Any], progress: bool) -> dict[str, Tensor]:
    from tqdm.auto import tqdm

    chunks: dict[str, list[Tensor]] = {}
    starts = range(0, len(payloads), group.batch_size)
    for start in tqdm(starts, desc=group.name, unit="batch", disable=not progress):
        for name, tensor in group.compute(payloads[start:start + group.batch_size]).items():
            value = tensor.detach().cpu()
            chunks.setdefault(name, []).append(
                value.to(group.dtype) if value.is_floating_point() else value)
    if not chunks:
        return {name: tensor.detach().cpu()[:0] for name, tensor in group.compute([]).items()}
    return {name: pad_cat(parts) for name, parts in chunks.items()}


def pad_cat(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate along rows, zero-padding the second axis to the longest (token states)."""
    if len({p.shape[1:] for p in parts}) > 1 and all(p.ndim >= 2 for p in parts):
        longest = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, longest - p.shape[1]))
                 for p in parts]
    return torch.cat(list(parts))


def write_table(path: Path, columns: Mapping[str, Tensor], keys: list[str],
                group: FeatureGroup, dataset: str) -> FeatureTable:
    """Tensor file first, manifest last, each atomically: a crash leaves no valid-looking
    manifest over a partial file. Returns the table (its checksum was just computed from
    the file written, so it is not read back to be checked again)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path(path).unlink(missing_ok=True)
    temporary = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in columns.items()}, str(temporary))
    os.replace(temporary, path)
    manifest = {"format": CACHE_FORMAT, "group": group.name, "dataset": dataset,
                "identity": dict(group.identity), "dtype": str(group.dtype),
                "columns": sorted(columns), "rows": len(keys), "keys": keys,
                "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    temporary = manifest_path(path).with_name(path.stem + ".json.partial")
    temporary.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(temporary, manifest_path(path))
    return FeatureTable(path, {k: i for i, k in enumerate(keys)}, tuple(manifest["columns"]))
