"""bnnforge.hw: Amaranth streaming components, the IR → accelerator generator, Verilog emission."""

from .components import (
                         ARGMAX_LEVELS_PER_STAGE,
                         MVTU,
                         TREE_LEVELS_PER_STAGE,
                         Deserializer,
                         InputTable,
                         InputThreshold,
                         MaxPool,
                         ScoreUnit,
                         Serializer,
                         SlidingWindow,
                         StreamFIFO,
                         argmax_stages,
                         tree_stages,
)
from .generate import TOP_NAME, Accelerator, emit_verilog
from .mst_layer import MSTLayer
from .testing import stream_get, stream_put

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
                         "ScoreUnit",
                         "Serializer",
                         "SlidingWindow",
                         "StreamFIFO",
                         "emit_verilog",
                         "stream_get",
                         "stream_put",
                         "argmax_stages",
                         "tree_stages",
]
