"""Datasets: :class:`Dataset` (one benchmark on disk) and the file formats it is read with."""

from refground.data.dataset import DATASET_FORMATS, Dataset, DatasetFormat, Split

__all__ = ["DATASET_FORMATS", "Dataset", "DatasetFormat", "Split"]
