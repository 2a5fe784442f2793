"""bnnforge: binary neural networks from PyTorch to verified, open-toolchain FPGA accelerators.

The front door: the public API in one namespace.
"""

from .compiler import (
                        DataflowGraph,
                        FoldThresholds,
                        GraphFileError,
                        UnsupportedModelError,
                        load_graph,
                        lower,
                        save_graph,
)
from .modelfile import ModelFileError, load, read_info, save
from .sim import reference

__version__ = "0.1.0"

__all__ = [
    "DataflowGraph", "FoldThresholds", "GraphFileError", "UnsupportedModelError", "load_graph",
    "lower", "save_graph", "reference", "ModelFileError", "load", "read_info", "save",
    "__version__",
]
