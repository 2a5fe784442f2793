"""bnnforge.compiler: the dataflow IR, lowering from torch, passes and serialization."""

from .costs import estimate_luts
from .cycles import pipeline_cycles
from .folding import ChooseFolding, FoldingError
from .ir import (
    OP_TYPES,
    BinaryConv,
    BinaryDense,
    Concat,
    DataflowGraph,
    InputLayer,
    MaxPool,
    Op,
    ResidualAdd,
    ScoreLayer,
    pack_bits,
    unpack_bits,
)
from .lower import UnsupportedModelError, lower
from .mst import OrderChannelsByMST, analyse_graph, hamming_matrix, mst_tree
from .passes import FoldThresholds, fold_residual, fold_score_affine
from .serialize import GraphFileError, load_graph, save_graph

__all__ = [
    "OP_TYPES", "BinaryConv", "BinaryDense", "Concat", "DataflowGraph", "InputLayer", "MaxPool",
    "Op", "ResidualAdd", "ScoreLayer", "pack_bits", "unpack_bits", "lower",
    "UnsupportedModelError", "FoldThresholds", "fold_residual", "fold_score_affine",
    "GraphFileError", "load_graph", "save_graph",
    "ChooseFolding", "FoldingError", "estimate_luts", "pipeline_cycles",
    "OrderChannelsByMST", "analyse_graph", "hamming_matrix", "mst_tree",
]
