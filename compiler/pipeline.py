"""The pipeline depths of the generated hardware: one definition for the generator and the model.

The adder trees of the matrix units and the argmax of the score unit are pipelined at fixed
intervals; :mod:`bnnforge.hw.matrix` builds them and :mod:`bnnforge.sim.timing` counts their
registers, both from here, so the timing contract cannot drift between the two.
"""

from __future__ import annotations

__all__ = ["ARGMAX_LEVELS_PER_STAGE", "TREE_LEVELS_PER_STAGE", "argmax_stages", "tree_stages"]


#: Adder-tree levels between two pipeline registers of the popcount / signed-sum tree.
TREE_LEVELS_PER_STAGE = 3


def tree_stages(simd: int) -> int:
    """Return the number of pipeline registers in the adder tree over ``simd`` terms.

    ``ceil(ceil(log2(simd)) / 3)``: 0 for SIMD = 1, 1 for SIMD = 2..8, 2 for 9..64, …
    """
    levels = (simd - 1).bit_length()
    return -(-levels // TREE_LEVELS_PER_STAGE)


#: Comparator levels of the score unit's argmax tree between two pipeline registers. One: a
#: signed compare and a 2:1 mux of the score fill an iCE40 cycle at 30 MHz (two did not).
ARGMAX_LEVELS_PER_STAGE = 1


def argmax_stages(classes: int) -> int:
    """Return the pipeline registers inside the argmax tree over ``classes`` scores.

    The tree has ``L = ceil(log2(classes))`` comparator levels; a register follows every
    :data:`ARGMAX_LEVELS_PER_STAGE` levels except the last group, which feeds the output
    register: ``max(0, ceil(L / A) - 1)`` — with A = 1: 0 for up to 2 classes, 1 for 3..4,
    3 for 9..16 (10 classes: 3), 5 for 33..64.
    """
    levels = (classes - 1).bit_length()
    return max(0, -(-levels // ARGMAX_LEVELS_PER_STAGE) - 1)

