"""bnnforge.hw: Amaranth streaming components, the IR → accelerator generator, Verilog emission."""

from .components import (
                         MVTU,
                         TREE_LEVELS_PER_STAGE,
                         Deserializer,
                         InputThreshold,
                         MaxPool,
                         ScoreUnit,
                         SlidingWindow,
                         StreamFIFO,
                         tree_stages,
)
from .generate import TOP_NAME, Accelerator, emit_verilog
from .testing import stream_get, stream_put

__all__ = [
                         "MVTU",
                         "TOP_NAME",
                         "TREE_LEVELS_PER_STAGE",
                         "Accelerator",
                         "Deserializer",
                         "InputThreshold",
                         "MaxPool",
                         "ScoreUnit",
                         "SlidingWindow",
                         "StreamFIFO",
                         "emit_verilog",
                         "stream_get",
                         "stream_put",
                         "tree_stages",
]
