"""Dataset file formats: each module registers one in
:data:`refground.data.dataset.DATASET_FORMATS` (every module here is imported on first lookup)."""
