"""bnnforge.nn: layers, binarizers, reference architectures and datasets to train BNNs."""

from .archs import ARCHS, BasicBlock, ResNet, build
from .datasets import DATASETS, Dataset, load_dataset
from .layers import (
    SCALE_MODES,
    BinaryActivation,
    BinaryConv2d,
    BinaryLinear,
    InputQuant,
    default_scale,
)
from .quantizers import QUANTIZERS, Quantizer, make_quantizer, reste_o, sign
from .train import evaluate, predict_scores, train

__all__ = [
    "ARCHS",
    "DATASETS",
    "BasicBlock",
    "QUANTIZERS",
    "SCALE_MODES",
    "BinaryActivation",
    "BinaryConv2d",
    "BinaryLinear",
    "Dataset",
    "InputQuant",
    "Quantizer",
    "ResNet",
    "build",
    "default_scale",
    "evaluate",
    "load_dataset",
    "make_quantizer",
    "predict_scores",
    "reste_o",
    "sign",
    "train",
]
