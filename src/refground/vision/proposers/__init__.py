"""Detector-backed proposers, one module each; they register in ``refground.vision.proposals``.

Importing a module here is cheap: transformers and ultralytics are imported when a proposer is
constructed, so the registry can list every name on a machine that has neither.
"""
