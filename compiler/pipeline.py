"""The pipeline depths of the generated hardware: one definition for the generator and the model.

The adder trees of the matrix units, their weight and threshold ROMs, the threshold compare
and the argmax of the score unit are pipelined as a :class:`Pipeline` says; one is chosen per
FPGA family (:data:`PIPELINES`, :func:`pipeline_for`) and named in the graph's
``meta["pipeline"]`` by ``compile --board``. :mod:`bnnforge.hw.matrix` builds the registers and
:mod:`bnnforge.compiler.plan` counts them into each block's latency (which
:mod:`bnnforge.sim.timing` reads), both from here, so the timing contract cannot drift between
the two.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARGMAX_LEVELS_PER_STAGE", "LANE_SHAPES", "PIPELINES", "TREE_LEVELS_PER_STAGE",
           "Pipeline", "argmax_stages", "lane_levels", "lane_stages", "output_slots",
           "pipeline_for", "tree_stages"]

#: How a binary lane sums its XNORs (:attr:`Pipeline.lanes`): ``"adder"``, the binary adder
#: tree (:func:`bnnforge.hw.matrix.adder_tree`); ``"ecp5"`` / ``"ice40"``, the carry-chain
#: popcount of :mod:`bnnforge.hw.popcount` in that family's shape (CCU2C halves take two XNOR
#: terms each and inject a third as a carry-in: ~2.45 LUT4 a bit placed on ECP5 against 4.5;
#: SB_LUT4 + SB_CARRY segments on iCE40, ~17% fewer cells).
LANE_SHAPES = ("adder", "ecp5", "ice40")


@dataclass(frozen=True)
class Pipeline:
    """Where the matrix units put their pipeline registers.

    Attributes
    ----------
    name : str
        The key in :data:`PIPELINES`.
    tree_levels : int
        Adder-tree levels between two registers of a popcount / signed-sum tree (the XNOR
        sits in front of the first level).
    rom_register : int
        Registers (0, 1 or 2) on the weight ROM's read data (and the threshold ROM's) before
        use, the operand delayed to match: a block RAM's clock-to-out (5.8 ns on an ECP5
        DP16KD, whose output register Yosys does not map; ~1.2 ns on an iCE40 EBR) no longer
        adds to the first adder levels; with two, the first can sit by the RAM and the second
        by the lanes, so the RAM-to-lane route is a path of its own. One stage each.
    compare_register : bool
        Compare the accumulator registers with the thresholds one stage after the accumulate
        stage, instead of the accumulate adder's output in the same cycle: the accumulate
        carry chain and the compare's are no longer one path. One more stage, no more
        registers (in popcount mode the counts also leave from the accumulator registers).
    argmax_levels : int
        Comparator levels of the score unit's argmax tree (over the PE lanes of a group)
        between two registers.
    operand_register : bool
        Without ``rom_register``: register the operand once more (after the input buffer's
        word select) and read the weight ROM one cycle later from a registered address instead
        of registering its data — the same stage for SIMD·b + log2(words) flip-flops instead
        of PE·SIMD + SIMD·b (an iCE40 EBR's clock-to-out is short; its input buffer's word
        select is not).
    lanes : str
        How a binary lane sums its XNORs (:data:`LANE_SHAPES`): ``"adder"`` (binary adder
        tree, :func:`tree_stages` registers) or a carry-chain popcount in a family's shape
        (:func:`lane_stages` registers, one level fewer for every SIMD that is not a power of
        two).
    select_folds : int
        The most words of a held vector in registers a step's operand is selected from with a
        multiplexer; a vector of more words rotates by a word a step instead. The rotation
        writes all K·b flip-flops every step (on the sfc score unit 36k toggles a frame, ten
        times its lanes'), so only iCE40, where a 64-to-1 select was a critical path at
        45 MHz, rotates beyond 4 words; ECP5's slice multiplexers (PFUMX, L6MUX21) make a
        64-to-1 select two slice levels.
    """

    name: str
    tree_levels: int
    rom_register: int
    compare_register: bool
    argmax_levels: int = 1
    operand_register: bool = False
    lanes: str = "adder"
    select_folds: int = 4

    def rotates(self, folds: int) -> bool:
        """Whether a held vector in registers of ``folds`` words rotates (else a word select)."""
        return folds > self.select_folds

    def lane_stages(self, terms: int, input_bits: int = 1) -> int:
        """Registers in one lane over ``terms`` inputs: a binary lane's popcount
        (:func:`lane_stages` for the carry-chain lanes, :func:`tree_stages` for adder trees),
        an 8-bit lane's signed adder tree (:func:`tree_stages`)."""
        if input_bits == 1 and self.lanes != "adder":
            return lane_stages(terms, self.tree_levels)
        return self.tree_stages(terms)

    @property
    def operand_stage(self) -> int:
        """Stages the operand is delayed by after the input buffer (``rom_register``, or 1 with
        ``operand_register``)."""
        return max(int(self.rom_register), int(self.operand_register))

    def tree_stages(self, terms: int) -> int:
        """Registers in an adder tree over ``terms`` inputs: ceil(ceil(log2 terms) / levels)."""
        return tree_stages(terms, self.tree_levels)

    def tree_register_bits(self, terms: int, term_bits: int) -> int:
        """Register bits of one adder tree over ``terms`` inputs of ``term_bits`` bits (level
        l: ceil(terms / 2^l) sums of l + term_bits bits; a register every ``tree_levels``
        levels and after the last)."""
        n, last, bits = terms, (terms - 1).bit_length(), 0
        for level in range(1, last + 1):
            n = -(-n // 2)
            if level % self.tree_levels == 0 or level == last:
                bits += n * (level + term_bits)
        return bits

    def argmax_stages(self, lanes: int) -> int:
        """Registers of the argmax tree over a group's ``lanes`` scores (see
        :func:`argmax_stages`)."""
        return argmax_stages(lanes, self.argmax_levels)

    @property
    def extra(self) -> int:
        """Stages an MVTU adds for the operand / ROM and compare registers."""
        return self.operand_stage + int(self.compare_register)

    def mvtu_latency(self, simd: int, input_bits: int = 1) -> int:
        """Cycles from an MVTU's last step to its output being written."""
        return self.lane_stages(simd, input_bits) + 1 + self.extra

    def score_latency(self, simd: int, pe: int, folds: int = 1, input_bits: int = 1) -> int:
        """Cycles from a score unit's last step to its output register being written: the
        MVTU's stages to the accumulate stage, the accumulators, the lane scores' register,
        the argmax tree over the PE lanes (:meth:`argmax_stages`) and the running best, whose
        compare takes a stage of its own with ``compare_register`` when groups come at least
        two cycles apart (``folds`` = K/SIMD > 1)."""
        split = int(bool(self.compare_register) and folds > 1)
        return self.lane_stages(simd, input_bits) + 3 + self.operand_stage + \
            self.argmax_stages(pe) + split

    def mst_latency(self, k: int, depth: int) -> int:
        """Enabled cycles from an MST layer's input handshake to its output register."""
        return self.tree_stages(k) + depth + 1



#: Adder-tree levels between two pipeline registers in the legacy (``"compact"``) pipeline.
TREE_LEVELS_PER_STAGE = 3

#: Comparator levels of the score unit's argmax tree between two pipeline registers. One: a
#: signed compare and a 2:1 mux of the score fill an iCE40 cycle at 30 MHz (two did not).
ARGMAX_LEVELS_PER_STAGE = 1


def tree_stages(simd: int, levels: int = TREE_LEVELS_PER_STAGE) -> int:
    """Return the number of pipeline registers in the adder tree over ``simd`` terms.

    ``ceil(ceil(log2(simd)) / levels)``: with 3 levels a stage, 0 for SIMD = 1, 1 for SIMD =
    2..8, 2 for 9..64, …
    """
    n = (simd - 1).bit_length()
    return -(-n // levels)


def lane_levels(n: int) -> int:
    """Adder levels of a carry-chain popcount lane over ``n`` terms: floor(log2 n) (0 for
    n = 1): a level of segments ``A + B + c`` holds up to 2^(D+1) - 1 terms."""
    return max(0, int(n).bit_length() - 1)


def lane_stages(n: int, levels_per_stage: int, levels: int | None = None) -> int:
    """Pipeline registers (latency in cycles) of a carry-chain popcount lane over ``n`` terms:
    ceil(floor(log2 n) / levels_per_stage), a register after every ``levels_per_stage``-th
    level and after the last; 0 for n = 1 (the XNOR is used as it is). With ``levels``:
    ceil(levels / levels_per_stage)."""
    if n <= 1:
        return 0
    return -(-(levels or lane_levels(n)) // levels_per_stage)


def argmax_stages(lanes: int, levels: int = ARGMAX_LEVELS_PER_STAGE) -> int:
    """Return the pipeline registers of the argmax tree over ``lanes`` scores.

    The tree has ``L = ceil(log2(lanes))`` comparator levels and a register after every
    ``levels`` levels and after the last: ``ceil(L / levels)`` — with one level a stage: 0 for
    one lane, 1 for 2, 2 for 3..4, 4 for 9..16.
    """
    n = (lanes - 1).bit_length()
    return -(-n // levels)


def output_slots(cycles: int, latency: int) -> int:
    """Results a matrix unit's output queue holds: ``max(1, ceil((latency + 2) / cycles))``.

    A matrix unit issues a vector's last step only when a slot is free for its result (a
    credit), so its pipeline never stalls; with this many slots a consumer that takes every
    result at once never delays a last step (``cycles`` = F, the initiation interval;
    ``latency`` = the cycles from the last step to the result's write).
    """
    return max(1, -(-(latency + 2) // cycles))


#: The pipelines, by name. ``compact``: the first generator's (three adder levels a stage,
#: ROM data and compares unregistered; fewest registers). ``ice40`` / ``ecp5``: what the
#: families' place-and-route results ask for (docs/design.md, "Clock"); ``generic`` (graphs
#: compiled without a board) is the deeper of the two.
PIPELINES = {
    "compact": Pipeline("compact", 3, 0, False),
    "ice40": Pipeline("ice40", 2, 0, True, operand_register=True, lanes="ice40"),
    "ecp5": Pipeline("ecp5", 1, 2, True, lanes="ecp5", select_folds=64),
    "generic": Pipeline("generic", 2, 1, True, lanes="ecp5", select_folds=64),
}

#: The pipeline of each FPGA family (:attr:`bnnforge.boards.profiles.BoardProfile.family`).
FAMILY_PIPELINE = {"ice40up": "ice40", "ice40hx": "ice40", "ecp5": "ecp5"}


def pipeline_for(name: str | Pipeline | None) -> Pipeline:
    """Return the :class:`Pipeline` named ``name`` (a key of :data:`PIPELINES` or an FPGA
    family of :data:`FAMILY_PIPELINE`); ``None`` gives ``generic``."""
    if isinstance(name, Pipeline):
        return name
    if name is None:
        return PIPELINES["generic"]
    key = FAMILY_PIPELINE.get(name, name)
    if key not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose one of "
                         f"{', '.join(sorted(PIPELINES))} or a family "
                         f"({', '.join(sorted(FAMILY_PIPELINE))})")
    return PIPELINES[key]
