"""Datasets (``*_dataset.py``, registered in BasicSR's DATASET_REGISTRY by :func:`lwsr_plugin.register`) and the
data preparation commands. Importing this package imports nothing heavy: ``lwsr-prepare-*``/``lwsr-check-lmdb``
answer ``--help`` and check their arguments before torch or BasicSR is loaded."""
