"""A dataset is one object: where it lives, how it is split, and which file format it is in.

Everything that reads a benchmark -- evaluation, training, the feature and graph caches,
methods that look at the training split (visual-prompt's debiasing) -- goes through
:class:`Dataset`. What differs between file formats is a :class:`DatasetFormat`, registered by
name in :data:`DATASET_FORMATS`; every module of :mod:`refground.data.formats` is imported on
first lookup, so adding a format is writing one file there (``formats/refer.py`` is the
REFER layout of RefCOCO/+/g and SynthRef).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from refground.registry import Registry
from refground.types import Sample, SceneGraph


@dataclass(frozen=True)
class Split:
    """The samples of one split, with what was skipped and why (when ``skip_invalid``)."""

    dataset: str
    split_by: str
    split: str
    samples: tuple[Sample, ...]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)


class DatasetFormat(Protocol):
    """How one file format is read. Errors are :class:`~refground.errors.DatasetError`s whose
    message names the file and record and says what to change."""

    def split(self, dataset: Dataset, name: str, skip_invalid: bool) -> Split:
        """Every sample of split ``name``. With ``skip_invalid`` malformed records and missing
        images are listed in ``Split.skipped``; without it the first one raises."""
        ...

    def expressions(self, dataset: Dataset, split: str | None) -> list[str]:
        """The text of every sentence of ``split`` (of every split when None), in file order,
        as a sample would carry it; reads no image and checks no image file."""
        ...

    def annotation_files(self, dataset: Dataset) -> list[Path]:
        """The files whose contents define the dataset's version (for cache identities)."""
        ...


#: Dataset formats by name; a format registers itself with ``@DATASET_FORMATS.register(name)``
#: on a class whose instances implement :class:`DatasetFormat`.
DATASET_FORMATS: Registry[DatasetFormat] = Registry(
    "dataset format", packages=("refground.data.formats",))


@dataclass(frozen=True)
class Dataset:
    """A benchmark on disk: ``<root>/<name>/`` holds its annotations (and the caches derived
    from them), ``images_dir`` (default ``<root>/images``) its images; ``split_by`` names the
    partition (REFER's ``umd``, ``unc``, ``google``; SynthRef's ``synth``)."""

    root: Path
    name: str
    split_by: str
    images_dir: Path | None = None
    format: str = "refer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.images_dir is not None:
            object.__setattr__(self, "images_dir", Path(self.images_dir))

    @property
    def directory(self) -> Path:
        """``<root>/<name>``: the annotations, and the graph and feature caches built on them."""
        return self.root / self.name

    @property
    def images_root(self) -> Path:
        return self.images_dir if self.images_dir is not None else self.root / "images"

    def _format(self) -> DatasetFormat:
        return DATASET_FORMATS.build(self.format)

    def split(self, name: str, *, skip_invalid: bool = False, limit: int | None = None) -> Split:
        """The samples of split ``name`` (the first ``limit`` of them when given)."""
        split = self._format().split(self, name, skip_invalid)
        if limit is None:
            return split
        return Split(split.dataset, split.split_by, split.split, split.samples[:limit],
                     split.skipped)

    def expressions(self, split: str | None = None) -> list[str]:
        """The sentences of ``split`` (of every split when None) without loading samples: no
        image annotations are resolved and no image file is checked, so text-only consumers
        (parsing, debiasing) work where the images are absent."""
        return self._format().expressions(self, split)

    def graphs(self, backend: str = "auto") -> dict[str, SceneGraph]:
        """The scene graphs ``refground prepare-graphs`` cached for this dataset with
        ``backend`` (``auto``: the backend the parser would pick here), or ``{}``."""
        from refground.language.cache import dataset_graphs

        return dataset_graphs(self.directory, backend)

    def annotation_files(self) -> list[Path]:
        """The files that define this dataset's version; feature caches fingerprint them."""
        return self._format().annotation_files(self)
