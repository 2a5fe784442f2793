"""bnnforge.hw: Amaranth streaming components, the IR → accelerator generator, Verilog emission.

Blocks by family: :mod:`~bnnforge.hw.matrix` (MVTU, ScoreUnit, the adder tree),
:mod:`~bnnforge.hw.mst_layer`, :mod:`~bnnforge.hw.window` (SlidingWindow, MaxPool),
:mod:`~bnnforge.hw.streams` (StreamFIFO, Serializer, Deserializer, InputThreshold, InputTable,
StreamFork, StreamConcat), :mod:`~bnnforge.hw.join` (ResidualJoin).
"""

from ..compiler.pipeline import (
    ARGMAX_LEVELS_PER_STAGE,
    TREE_LEVELS_PER_STAGE,
    argmax_stages,
    tree_stages,
)
from .generate import TOP_NAME, Accelerator, emit_verilog
from .join import ResidualJoin
from .matrix import MVTU, ScoreUnit
from .mst_layer import MSTLayer
from .streams import (
    Deserializer,
    InputTable,
    InputThreshold,
    Serializer,
    StreamConcat,
    StreamFIFO,
    StreamFork,
)
from .testing import stream_get, stream_put
from .window import MaxPool, SlidingWindow

__all__ = [
    "ARGMAX_LEVELS_PER_STAGE",
    "MVTU",
    "MSTLayer",
    "TOP_NAME",
    "TREE_LEVELS_PER_STAGE",
    "Accelerator",
    "Deserializer",
    "InputTable",
    "InputThreshold",
    "MaxPool",
    "ResidualJoin",
    "ScoreUnit",
    "Serializer",
    "SlidingWindow",
    "StreamConcat",
    "StreamFIFO",
    "StreamFork",
    "argmax_stages",
    "emit_verilog",
    "stream_get",
    "stream_put",
    "tree_stages",
]
