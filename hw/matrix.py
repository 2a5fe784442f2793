"""Matrix units of a bnnforge accelerator: :class:`MVTU`, :class:`ScoreUnit` and the adder tree.

Every block takes an ``i_stream`` and gives an ``o_stream`` (:mod:`amaranth.lib.stream`). A
*transfer* (handshake) happens in a cycle whose ``valid`` and ``ready`` are both high when sampled
at that cycle's rising clock edge. Cycles are numbered by these edges.

Timing rule of the matrix units ("issue on credit"): the datapath never stalls. A step issued in
cycle t reaches every pipeline register a fixed number of cycles later, whatever the consumer
does; the registers load every cycle (a valid flag travels beside them), so no clock enable
fans out from the output handshake to the datapath. Back-pressure acts at one point: the unit
keeps an output queue of ``slots`` results (:func:`~bnnforge.compiler.pipeline.output_slots`)
and issues a vector's *last* step only while a slot is free for its result (a credit: results
issued but not yet taken by the consumer number fewer than ``slots``); the vector's other steps,
and the input buffer, go on. ``i_stream.ready`` and ``o_stream.valid`` are functions of the unit's
own registers, so no combinational path runs from a consumer's ``ready`` to a producer.

Datapath registers (operands, adder-tree stages, accumulators, held scores) are reset-less: a
valid flag travels beside them, and leaving them out of the reset lets the iCE40 packer share
logic tiles (a tile's eight cells share one clock enable and one reset).

:func:`adder_tree` is the one adder tree of the matrix units and of
:class:`~bnnforge.hw.mst_layer.MSTLayer`; its pipelining is the one
:mod:`bnnforge.compiler.pipeline` defines (and :mod:`bnnforge.sim.timing` counts).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..compiler.cycles import (
    MAX_INPUT_RAM_WORD,
    input_buffer_in_ram,
    input_ram_word,
    input_word_transfers,
)
from ..compiler.memory import rom_style
from ..compiler.pipeline import TREE_LEVELS_PER_STAGE, output_slots, pipeline_for
from .bram import BlockROM
from .checks import (
    check_input_bits,
    const_lookup,
    int_list,
    positive_int,
    quiet_on_error,
    rom_attrs,
    rom_styles,
    weight_matrix,
)
from .popcount import popcount_lane
from .streams import delay, shift_in

__all__ = ["MVTU", "ScoreUnit", "adder_tree"]


def _one_bit(v) -> bool:
    shape = Shape.cast(v.shape())
    return shape.width == 1 and not shape.signed


def _load(m: Module, en, stmts) -> None:
    """``stmts`` in the sync domain, in the cycles ``en`` is high (every cycle for ``None``)."""
    if en is None:
        m.d.sync += stmts
    else:
        with m.If(en):
            m.d.sync += stmts


def _greater(a, b):
    """``a > b`` for two signed values of one width, compared as unsigned numbers with their
    sign bits flipped (offset binary): the same order, and a plain carry chain without the
    sign fix-up logic signed compares synthesize to."""
    w = len(a)
    flip = Const(1 << (w - 1), w)
    return (a.as_unsigned() ^ flip) > (b.as_unsigned() ^ flip)


def _wrap_counter(m: Module, n: int, en, name: str) -> tuple:
    """A counter over 0 .. ``n`` - 1 that advances in the cycles ``en`` is high and wraps to 0,
    and a flag registered beside it, high while it is at ``n`` - 1 (no comparator behind
    it). Returns ``(value, last)``; for ``n`` = 1, ``(Const(0), Const(1))``."""
    if n == 1:
        return Const(0, 1), Const(1)
    value = Signal(range(n), name=name)
    last = Signal(name=f"{name}_last")
    with m.If(en):
        m.d.sync += [value.eq(Mux(last, 0, value + 1)), last.eq(~last & (value == n - 2))]
    return value, last


def _rom_read(m: Module, name: str, width: int, words: list, style, addr, registers: int):
    """The word of a ROM (``words``, in ``style``; ``None``: by
    :func:`~bnnforge.compiler.memory.rom_style`) at ``addr``, ``1 + registers`` cycles after
    ``addr`` is presented: a synchronous read and ``registers`` data registers. A block-RAM
    ROM with a register is a :class:`~bnnforge.hw.bram.BlockROM`, whose register is the
    block's own output register on ECP5; a ROM in logic with a register reads a registered
    address instead."""
    depth = len(words)
    style = style or rom_style(width, depth)
    attrs = rom_attrs(width, depth, style)
    if style == "bram" and registers >= 1:
        rom = BlockROM(width, depth, words, attrs=attrs)
        m.submodules[name] = rom
        m.d.comb += [rom.addr.eq(addr), rom.en.eq(1)]
        return delay(m, None, rom.data, registers - 1, f"{name}_reg", True)
    if style == "logic" and registers >= 1:
        # a ROM in logic reads a registered copy of the address, one data register fewer (the
        # same latency): Yosys maps the synchronous read into LUTs before a data register and
        # builds the decode from the address counter's own increment (the carry chain then
        # sits in front of the mux tree: a cnv build's critical path on ECP5, 121 MHz)
        addr = delay(m, None, addr, 1, f"{name}_addr", True)
        registers -= 1
    rom = Memory(shape=unsigned(width), depth=depth, init=words, attrs=attrs)
    m.submodules[name] = rom
    rd = rom.read_port(domain="sync")
    m.d.comb += [rd.addr.eq(addr), rd.en.eq(1)]
    return delay(m, None, rd.data, registers, f"{name}_reg", True)


def adder_tree(m: Module, terms: list, en, name: str,
               levels_per_stage: int = TREE_LEVELS_PER_STAGE) -> tuple[object, int]:
    """Sum ``terms`` in a balanced tree of two-input adders, pipelined as the contract says.

    Level l adds neighbouring pairs of level l - 1 (an odd last one passes through; two
    one-bit terms are added as a half adder in logic, ``Cat(a ^ b, a & b)``, so that synthesis
    can merge it with the XNORs in front instead of starting a carry chain); a register
    follows every ``levels_per_stage``-th level (the pipeline's
    :attr:`~bnnforge.compiler.pipeline.Pipeline.tree_levels`) and the last level, loading in
    cycles where ``en`` is high (every cycle for ``en=None``). Registers are reset-less
    (datapath) and named ``{name}_l{level}_{i}``. Returns ``(sum, registers)``: ``registers`` =
    :func:`~bnnforge.compiler.pipeline.tree_stages`\\(len(terms), levels_per_stage) for two
    terms or more; one term is returned as it is and no term as ``Const(0, 1)``, both with 0
    registers.
    """
    if not terms:
        return Const(0, 1), 0
    levels = (len(terms) - 1).bit_length()
    level = regs = 0
    while len(terms) > 1:
        level += 1
        reg = level % levels_per_stage == 0 or level == levels
        nxt = []
        for i in range(0, len(terms), 2):
            if i + 1 == len(terms):
                e = terms[i] + 0
            elif _one_bit(terms[i]) and _one_bit(terms[i + 1]):
                e = Cat(terms[i] ^ terms[i + 1], terms[i] & terms[i + 1])   # a half adder
            else:
                e = terms[i] + terms[i + 1]
            sig = Signal(e.shape(), name=f"{name}_l{level}_{i // 2}", reset_less=reg)
            if reg:
                _load(m, en, sig.eq(e))
            else:
                m.d.comb += sig.eq(e)
            nxt.append(sig)
        regs += reg
        terms = nxt
    return terms[0], regs


class _MatrixBase(wiring.Component):
    """Shared checks and datapath of :class:`MVTU` and :class:`ScoreUnit`."""

    def _check(self, k, channels, pe, simd, weights, input_bits, what, count=1,
               input_ram=None, pipeline=None, roms=None):
        #: the :class:`~bnnforge.compiler.pipeline.Pipeline` (where the registers are)
        self.pipeline = pipeline_for(pipeline)
        #: where the ROMs go, ``{"weights" / "thresholds": style}`` (a missing one: by cost)
        self.roms = rom_styles(roms)
        self.k = positive_int("K", k)
        self.count = positive_int("count", count)
        if self.k % self.count:
            raise ValueError(f"count must divide K={self.k}, not {count!r}")
        self.channels = positive_int(what, channels)
        self.pe = positive_int("PE", pe)
        self.simd = positive_int("SIMD", simd)
        if self.channels % self.pe:
            raise ValueError(f"PE must divide {what}={self.channels}, not {pe!r}")
        if self.k % self.simd:
            raise ValueError(f"SIMD must divide K={self.k}, not {simd!r}")
        self.input_bits = check_input_bits(input_bits)
        self.weights = weight_matrix(weights, self.channels, self.k)
        self.groups = self.channels // self.pe
        self.folds = self.k // self.simd
        #: compute cycles per vector (the initiation interval): channels/PE * K/SIMD
        self.cycles = self.groups * self.folds
        self.tree_stages = self.pipeline.lane_stages(self.simd, self.input_bits)
        ram_ok = input_buffer_in_ram(self.k, self.count, self.simd, self.input_bits)
        if input_ram is None:
            input_ram = ram_ok
        elif input_ram and not ram_ok:
            raise ValueError(f"input_ram needs count > 1 and at least two RAM words of "
                             f"lcm(K/count, SIMD) elements of at most {MAX_INPUT_RAM_WORD} bits; "
                             f"K={self.k}, count={self.count}, SIMD={self.simd}, "
                             f"input_bits={self.input_bits} do not give that")
        #: whether the input buffer and held vector are a block RAM (else registers)
        self.input_ram = bool(input_ram)
        #: transfers gathered into one input-RAM word when more than one (else 0): only a
        #: word's last transfer waits for room in the buffer
        self.word_transfers = input_word_transfers(self.k, self.count, self.simd,
                                                   self.input_bits, self.input_ram)
        if self.input_bits == 1:
            self.acc_range = (0, self.k)
        else:
            self.acc_range = (-255 * self.k, 255 * self.k)

    def _engine(self, m: Module, tag: Signal | None = None, tail: int = 0):
        """Build input buffer, sequencer, ROM, adder trees and accumulators.

        Returns (sums, ctl, depth): ``sums`` the per-lane accumulator values including the
        current step (comb, valid at the accumulate stage ``depth``), and ``ctl`` the control
        signals of every stage, ``ctl[i]`` = (valid, n, last_s, first_s, final) of the step
        issued i
        cycles earlier, for i = 0 .. depth + ``tail`` (the stages a caller adds after the
        accumulate stage). Stage 0 issues a step (the weight ROM reads word n·F/G + s, a
        counter); stage 1 holds the operand and the ROM data; the pipeline's ``operand_stage``
        registers delay both further (ROM data registers, or a registered ROM address with
        ``operand_register``); the XNORs and the adder tree follow, then the accumulate stage.
        With ``tag`` (a signal the caller sets when a vector is taken, see ``self._take``), each
        ctl tuple gets a fifth element: the tag of the vector that stage belongs to.

        A vector's last step issues only with ``self._credit`` high (the caller's output queue
        has a slot for its result, :meth:`_queue`); ``self._use`` is high in the cycles it does.
        Nothing else waits: every register after the issue loads every cycle.
        """
        b, pe, simd = self.input_bits, self.pe, self.simd
        groups, folds = self.groups, self.folds

        # -- sequencer: step s of group n; flags registered beside the counters, so that the
        # take / ready logic is one LUT of flip-flops, and `issue` itself a flip-flop (computed
        # a cycle ahead from the next state), so the counters' enable is a register ----------
        busy = Signal()
        credit = self._credit = Signal(init=1)    # registered: self._credit_next a cycle on
        self._credit_next = Signal()
        use = self._use = Signal()
        final = Signal(init=int(folds == 1 and groups == 1), name="final")   # the last step
        final_ok = Signal()
        take = Signal()
        ibuf_full = Signal()
        issue = Signal(name="issue")
        busy_next, final_next = Signal(), Signal()
        m.d.comb += [
            final_ok.eq(final & credit),              # the last step may issue
            use.eq(issue & final),
            take.eq(ibuf_full & (~busy | final_ok)),
            busy_next.eq(Mux(~busy | final_ok, take, busy)),
        ]
        m.d.sync += [busy.eq(busy_next), credit.eq(self._credit_next),
                     issue.eq(busy_next & (~final_next | self._credit_next))]
        self._take = take
        # the counters run on issue alone: a vector's last step wraps them to 0, ready for the
        # next (no reset on take)
        s, last_s = _wrap_counter(m, folds, issue, "s")
        n, last_n = _wrap_counter(m, groups, issue & last_s, "n")
        if folds > 1 or groups > 1:
            nxt_s = Const(1) if folds == 1 else ~last_s & (s == folds - 2)
            nxt_n = Const(1) if groups == 1 else \
                Mux(last_s, ~last_n & (n == groups - 2), last_n)
            m.d.comb += final_next.eq(Mux(issue, nxt_s & nxt_n, final))
            m.d.sync += final.eq(final_next)
        else:
            m.d.comb += final_next.eq(final)
        first_s = Const(1)
        if folds > 1:
            first_s = Signal(init=1, name="first_s")    # s == 0, registered beside s
            with m.If(issue):
                m.d.sync += first_s.eq(last_s)
        # x: the SIMD elements of step s, valid the cycle after it was issued
        if self.input_ram:
            x = self._ram_buffer(m, ibuf_full, take, issue)
        else:
            x = self._register_buffer(m, ibuf_full, take, issue, s)

        # -- weight ROM: word n*folds + s holds lane p's SIMD bits at [p*SIMD, (p+1)*SIMD) --
        words = []
        wmat = self.weights.reshape(groups, pe, folds, simd)
        for g in range(groups):
            for f in range(folds):
                bits = wmat[g, :, f, :].reshape(-1)
                words.append(int.from_bytes(np.packbits(bits, bitorder="little").tobytes(),
                                            "little"))
        w = Signal(pe * simd)
        rom_reg = int(self.pipeline.rom_register)
        if len(words) == 1:
            m.d.comb += w.eq(words[0])
        else:
            # the word of step (n, s) is n*folds + s: a counter, not a multiply-add
            addr = Signal(range(len(words)))
            with m.If(issue):
                m.d.sync += addr.eq(Mux(final, 0, addr + 1))
            if self.pipeline.operand_stage > rom_reg:
                addr = delay(m, None, addr, 1, "w_addr", True)    # read a cycle later instead
            m.d.comb += w.eq(_rom_read(m, "weights", pe * simd, words, self.roms.get("weights"),
                                       addr, rom_reg))
        x = delay(m, None, x, self.pipeline.operand_stage, "x_reg", True)

        # control pipeline: ctl[0] at issue, ctl[i] i cycles later
        def ctl_regs(i):
            regs = (Signal(name=f"ctl{i}_valid"), Signal(range(groups), name=f"ctl{i}_n"),
                    Signal(name=f"ctl{i}_last_s"), Signal(name=f"ctl{i}_first_s"),
                    Signal(name=f"ctl{i}_final"))
            return regs if tag is None else (*regs, Signal.like(tag, name=f"ctl{i}_tag"))
        ctl = [(issue, n, last_s, first_s, final)] if tag is None else \
            [(issue, n, last_s, first_s, final, tag)]
        depth = 1 + self.pipeline.operand_stage + self.tree_stages
        for i in range(1, depth + tail + 1):
            regs = ctl_regs(i)
            m.d.sync += [r.eq(p) for r, p in zip(regs, ctl[-1], strict=True)]
            ctl.append(regs)

        # -- per-lane XNOR / signed terms and adder tree ---------------------------------------
        sums = []
        self._accs = []
        for p in range(pe):
            wl = Signal(simd, name=f"w{p}")
            m.d.comb += wl.eq(w[p * simd:(p + 1) * simd])
            if b == 1:
                xn = Signal(simd, name=f"xnor{p}")
                m.d.comb += xn.eq(~(x ^ wl))
                terms = [xn[i] for i in range(simd)]
            else:
                terms = []
                for i in range(simd):
                    t = Signal(signed(10), name=f"term{p}_{i}")
                    q = x[8 * i:8 * i + 8]
                    m.d.comb += t.eq(Mux(wl[i], q, -q))
                    terms.append(t)
            if b == 1 and self.pipeline.lanes != "adder":
                partial, regs = popcount_lane(m, x, wl, Const(1), f"lane{p}",
                                              self.pipeline.tree_levels,
                                              family=self.pipeline.lanes)
            else:
                partial, regs = adder_tree(m, terms, None, f"lane{p}",
                                           self.pipeline.tree_levels)
            assert regs == self.tree_stages
            acc = Signal(Shape.cast(range(self.acc_range[0], self.acc_range[1] + 1)),
                         name=f"acc{p}", reset_less=True)
            total = Signal.like(acc, name=f"sum{p}")
            valid, _, _, first = ctl[depth][:4]
            m.d.comb += total.eq(Mux(first, 0, acc) + partial)
            with m.If(valid):
                m.d.sync += acc.eq(total)
            sums.append(total)
            self._accs.append(acc)
        return sums, ctl, depth

    def _queue(self, m: Module, put, word):
        """The output queue of ``self.slots`` results and the credit of :meth:`_engine`.

        ``word`` enters in a cycle ``put`` is high (a slot is always free then: its last step
        took a credit) and is offered from the next cycle, in order; ``o_stream.valid`` is high
        while a result is held. Returns the word at the head (a register, or the FIFO's read
        data), for the caller to put on ``o_stream.payload``.
        """
        o = self.o_stream
        slots = self.slots
        taken = Signal()
        m.d.comb += taken.eq(o.valid & o.ready)
        if slots == 1:
            head = Signal(len(word), name="out", reset_less=True)
            with m.If(put):
                m.d.sync += [o.valid.eq(1), head.eq(word)]
            with m.Elif(taken):
                m.d.sync += o.valid.eq(0)
            # the slot is free from the cycle after the result is taken until a last step
            # takes it (the credit, registered in the sequencer)
            free = Signal(init=1, name="free")
            m.d.comb += self._credit_next.eq(Mux(self._use, 0, Mux(taken, 1, free)))
            m.d.sync += free.eq(self._credit_next)
            return head
        m.submodules.queue = q = fifo.SyncFIFO(width=len(word), depth=slots)
        m.d.comb += [q.w_data.eq(word), q.w_en.eq(put), o.valid.eq(q.r_rdy),
                     q.r_en.eq(o.ready)]
        free = Signal(range(slots + 1), init=slots, name="free")
        free_next = Signal.like(free)
        m.d.comb += [free_next.eq(free - self._use + taken),
                     self._credit_next.eq(free_next != 0)]
        m.d.sync += free.eq(free_next)
        return q.r_data

    def _register_buffer(self, m, ibuf_full, take, issue, s):
        """Input buffer and held vector in registers (2·K·b flip-flops); step s reads word s of
        the held vector through a word select (up to
        :attr:`~bnnforge.compiler.pipeline.Pipeline.select_folds` words; more: the held vector
        rotates a word a step). Returns the registered operand."""
        k, b, simd, folds, count = self.k, self.input_bits, self.simd, self.folds, self.count
        i_s = self.i_stream
        ibuf = Signal(k * b, reset_less=True)
        cur = Signal(k * b, reset_less=True)
        m.d.comb += i_s.ready.eq(~ibuf_full | take)
        accepted = i_s.valid & i_s.ready
        if count > 1:
            ew = k * b // count
            _, last_e = _wrap_counter(m, count, accepted, "idx")
            with m.If(accepted):
                m.d.sync += [ibuf.eq(Cat(ibuf[ew:], i_s.payload)), ibuf_full.eq(last_e)]
            with m.Elif(take):
                m.d.sync += ibuf_full.eq(0)
        else:
            with m.If(accepted):
                m.d.sync += [ibuf.eq(i_s.payload), ibuf_full.eq(1)]
            with m.Elif(take):
                m.d.sync += ibuf_full.eq(0)
        x = Signal(simd * b, reset_less=True)
        if self.pipeline.rotates(folds):
            # many words: the held vector rotates by a word a step (its words come round to
            # the low end in order, and back in place after every group), instead of a wide
            # multiplexer in front of the operand
            with m.If(take):
                m.d.sync += cur.eq(ibuf)
            with m.Elif(issue):
                m.d.sync += cur.eq(cur.rotate_right(simd * b))
            m.d.sync += x.eq(cur[:simd * b])
            return x
        with m.If(take):
            m.d.sync += cur.eq(ibuf)
        m.d.sync += x.eq(cur.word_select(s, simd * b) if folds > 1 else cur)
        return x

    def _ram_buffer(self, m, ibuf_full, take, issue):
        """Input buffer and held vector as two banks of a block RAM (see
        :func:`~bnnforge.compiler.cycles.input_ram_word`): transfers are gathered into words
        of L = lcm(K/count, SIMD) elements, one write per word, into the bank being filled;
        step s reads word s·SIMD // L of the held bank (a synchronous read, so the operand is
        valid the cycle after the step is issued, as in the register buffer) and selects
        its SIMD elements. Returns the operand."""
        k, b, simd, count = self.k, self.input_bits, self.simd, self.count
        i_s = self.i_stream
        ew = k // count                     # elements per transfer
        lw = input_ram_word(k, count, simd)  # elements per RAM word
        words, per_word, subs = k // lw, lw // ew, lw // simd
        mem = Memory(shape=unsigned(lw * b), depth=2 * words, init=[])
        m.submodules.vector = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")
        accepted = Signal()
        m.d.comb += accepted.eq(i_s.valid & i_s.ready)

        # write side: gather per_word transfers, then write one word into bank `wbank`; a
        # transfer that does not complete a word goes into the gather register whenever it
        # comes, so with per_word > 1 only a word's last transfer waits for room in the bank
        # (and ``ready`` is a function of flip-flops alone)
        wbank = Signal()
        if per_word > 1:
            gather = Signal((per_word - 1) * ew * b, reset_less=True)
            _, last_sub = _wrap_counter(m, per_word, accepted, "wsub")
            m.d.comb += [wp.data.eq(Cat(gather, i_s.payload)),
                         i_s.ready.eq(~ibuf_full | ~last_sub)]
            with m.If(accepted):
                m.d.sync += gather.eq(Cat(gather[ew * b:], i_s.payload))
        else:
            last_sub = Const(1)
            m.d.comb += [wp.data.eq(i_s.payload), i_s.ready.eq(~ibuf_full | take)]
        put = Signal()            # a word's last transfer accepted (written out, one LUT4)
        m.d.comb += put.eq(i_s.valid & last_sub & (~ibuf_full | (take if per_word == 1 else 0)))
        wword, last_word = _wrap_counter(m, words, put, "wword")
        m.d.comb += [wp.addr.eq(Mux(wbank, words + wword, wword)), wp.en.eq(put)]
        with m.If(put & last_word):
            m.d.sync += [wbank.eq(~wbank), ibuf_full.eq(1)]
        with m.Elif(take):
            m.d.sync += ibuf_full.eq(0)

        # read side: the held vector is the bank filled before the one being written; the
        # words and their SIMD-wide parts in order, wrapping to 0 at a vector's last step
        rbank = Signal()
        with m.If(take):
            m.d.sync += rbank.eq(~wbank)
        rsub, last_rsub = _wrap_counter(m, subs, issue, "rsub")
        rword, _ = _wrap_counter(m, words, issue & last_rsub, "rword")
        m.d.comb += [rp.addr.eq(Mux(rbank, words + rword, rword)), rp.en.eq(1)]
        if subs == 1:
            return rp.data
        sel = Signal(range(subs), reset_less=True)
        m.d.sync += sel.eq(rsub)
        x = Signal(simd * b)
        m.d.comb += x.eq(rp.data.word_select(sel, simd * b))
        return x



class MVTU(_MatrixBase):
    """Matrix-vector-threshold unit: binary weights, one output bit per channel.

    Parameters
    ----------
    k : int
        Input vector length K.
    channels : int
        Output channels C.
    pe, simd : int
        Folding: PE lanes (must divide C) of SIMD elements each (must divide K).
    weights : numpy.ndarray
        (C, K) bits (1 = +1) or the IR's little-endian packed rows (C, ceil(K/8)) uint8.
    thresholds : sequence of int or None
        One per channel; output bit c = ``acc_c >= thresholds[c]``. Any Python int (values beyond
        the accumulator range give constant channels). ``None`` selects *popcount mode*: the
        unit outputs every channel's ``P = acc_c = popcount(XNOR(x, w_c))`` in 0..K as an
        unsigned number of ``int(K).bit_length()`` bits (attribute ``count_bits``) instead of
        a bit; binary inputs only and no pad classes (one class), as the main path of a
        residual add needs.
    input_bits : int
        1: ``acc = popcount(XNOR(x, w))``; 8: unsigned bytes, ``acc = sum(w ? +q : -q)``.
    count : int
        Transfers per input vector (default 1; must divide K): the unit collects ``count``
        transfers of K/count elements straight into its input buffer, so a feature map needs no
        separate :class:`Deserializer` in front.
    input_ram : bool or None
        Keep the input buffer and the held vector in a block RAM instead of registers.
        ``None`` (default): when :func:`~bnnforge.compiler.folding.input_buffer_in_ram` says so
        (``count > 1`` and at least two RAM words); ``True`` where it does not raises
        ``ValueError``. The timing is the same either way.
    row_class, col_class : sequence of int or None
        Pad classes of a convolution (:class:`~bnnforge.compiler.ir.BinaryConv`): the unit
        counts vectors in output raster order (OH = len(row_class) rows of OW = len(col_class),
        from reset, wrapping each frame) and compares vector (oy, ox) with threshold row
        ``row_class[oy] * (max(col_class) + 1) + col_class[ox]``; ``thresholds`` is then one
        row of C per class. The rows sit in the threshold ROM (``classes · C/PE`` words); the
        timing is unchanged.
    pipeline : Pipeline, str or None
        Where the pipeline registers go (:class:`~bnnforge.compiler.pipeline.Pipeline`, or a
        name or FPGA family for :func:`~bnnforge.compiler.pipeline.pipeline_for`; ``None``:
        ``generic``): adder levels per tree stage, the ROM data register, the compare register.
    roms : dict or None
        Where the weight and threshold ROMs go: ``{"weights": style, "thresholds": style}``
        with styles ``"bram"`` (marked ``rom_style = "block"``), ``"logic"`` or ``"const"``, as
        the hardware plan chose them (:func:`~bnnforge.compiler.memory.rom_style`); a ROM not
        named is placed by that rule without a board. The timing is the same either way.

    Ports
    -----
    i_stream : In(stream.Signature(K * input_bits / count))
        ``count`` transfers per vector, the first in the lowest elements; element i of the
        vector at bits [i*b, (i+1)*b) of their concatenation.
    o_stream : Out(stream.Signature(C)), or Out(stream.Signature(C * count_bits)) in popcount mode
        One transfer per vector; bit c = channel c (popcount mode: channel c's count at bits
        [c*count_bits, (c+1)*count_bits), channel 0 lowest). Attribute ``out_width``.

    Storage: two vectors — the input buffer, which collects the next vector while the engine
    computes, and the held current vector, whose SIMD-wide word s the engine reads in step s.
    Both are needed for II = F. In registers (2·K·b flip-flops, a word select), or with
    ``input_ram`` as two banks of one RAM of ``2·K/L`` words of ``L = lcm(K/count, SIMD)``
    elements (a gather register of ``L - K/count`` elements in front): a 784-pixel input then
    costs a block RAM or two instead of 1,568 flip-flops.

    Timing
    ------
    Let F = C/PE * K/SIMD (attribute ``cycles``), d = ``pipeline.lane_stages(SIMD, b)``
    (attribute ``tree_stages``), r = 1 with the pipeline's ROM register (else 0), c = 1 with
    its compare register, L = ``pipeline.mvtu_latency(SIMD)`` = d + 1 + r + c, and
    Q = ``output_slots(F, L)`` (attribute ``slots``). The datapath never stalls (module
    docstring): only a vector's last step waits, for a free output slot.

    * Input buffer (one vector): ``ibuf_full`` rises the cycle after the ``count``-th transfer
      of a vector is accepted and falls after the cycle ``take`` is high (a cycle with
      ``ibuf_full`` and the engine idle or issuing its last step). ``i_stream.ready = not
      ibuf_full or take``: the first transfer of vector j is accepted from the cycle vector
      j-1 was taken (the buffer is free), the others whenever offered. In RAM with W =
      ``word_transfers`` > 1 transfers a RAM word (attribute; 0 otherwise), ``i_stream.ready
      = not ibuf_full or not (the next transfer completes a word)``: a transfer that completes
      a word (every W-th of a vector) is accepted from the cycle after vector j-1 was taken,
      the others whenever offered. A vector whose last transfer is accepted in cycle a is in
      the buffer from cycle a+1: it is taken in cycle T_j = max(a + 1, L_{j-1}) (L_{j-1}: the
      cycle of the previous vector's last step).
    * Its first F - 1 steps issue in the cycles T_j + 1 … T_j + F - 1; its last step in cycle
      L_j = max(T_j + F, H_{j-Q} + 1), where H_i is the cycle result i is taken from
      ``o_stream`` (a credit: at most Q results issued and not yet taken). Back-to-back, the
      next vector is taken in the cycle of the previous vector's last step, so II = F.
    * The result enters the output queue L cycles after its last step and is offered from
      V_j = max(L_j + L + 1, H_{j-1} + 1), in order, until taken. A vector whose last transfer
      is accepted at cycle a into an empty, idle unit is offered from ``a + F + 2 + L``
      (attribute ``latency = F + 2 + L``). With Q = ceil((L + 2) / F) a consumer that takes
      every result at once never delays a last step. Tokens are never dropped or duplicated.
    * Popcount mode has exactly this timing (the counts take the place of the compare).
    """

    @quiet_on_error
    def __init__(self, k, channels, pe, simd, weights, thresholds, input_bits=1, count=1,
                 input_ram=None, row_class=None, col_class=None, pipeline=None, roms=None):
        self._check(k, channels, pe, simd, weights, input_bits, "channels", count, input_ram,
                    pipeline, roms)
        lo, hi = self.acc_range
        if (row_class is None) != (col_class is None):
            raise ValueError("row_class and col_class go together: give both or neither")
        #: popcount mode (``thresholds=None``): C counts of ``count_bits`` bits out, not C bits
        self.popcount = thresholds is None
        if self.popcount:
            if self.input_bits != 1:
                raise ValueError(f"popcount mode (thresholds=None) takes binary inputs only "
                                 f"(input_bits=1), not input_bits={input_bits!r}")
            if row_class is not None:
                raise ValueError("popcount mode (thresholds=None) takes one pad class only; "
                                 "row_class and col_class need thresholds")
            self.row_class = self.col_class = None
            self.class_thresholds = []
            self.thresholds = None
            self.count_bits = self.k.bit_length()
            rows = []
        elif row_class is None:
            rows = [thresholds]
            self.row_class = self.col_class = None
        else:
            self.row_class = [int(v) for v in row_class]
            self.col_class = [int(v) for v in col_class]
            if not self.row_class or not self.col_class or \
                    min(self.row_class + self.col_class) < 0:
                raise ValueError(f"row_class and col_class must be non-empty lists of class "
                                 f"indices >= 0, not {row_class!r} and {col_class!r}")
            rows = list(thresholds)
            want = (max(self.row_class) + 1) * (max(self.col_class) + 1)
            if len(rows) != want:
                raise ValueError(f"thresholds must hold {want} rows (one per pad class), "
                                 f"not {len(rows)}")
        #: thresholds per pad class (one row without class maps), clamped to the acc range
        self.class_thresholds = []
        for row in rows:
            t = int_list("thresholds", row, self.channels)
            self.class_thresholds.append([min(max(v, lo), hi + 1) for v in t])
        if not self.popcount:
            self.thresholds = self.class_thresholds[0]
            self.count_bits = None
        #: bits per output lane: 1, or ``count_bits`` in popcount mode
        self.lane_bits = self.count_bits if self.popcount else 1
        self.out_width = self.channels * self.lane_bits
        lat = self.pipeline.mvtu_latency(self.simd, self.input_bits)
        self.latency = self.cycles + 2 + lat
        #: results the output queue holds (:func:`~bnnforge.compiler.pipeline.output_slots`)
        self.slots = output_slots(self.cycles, lat)
        super().__init__({"i_stream": In(stream.Signature(self.k * self.input_bits
                                                          // self.count)),
                          "o_stream": Out(stream.Signature(self.out_width))})

    def elaborate(self, platform):
        m = Module()
        classes = len(self.class_thresholds)
        tag = Signal(range(classes), name="pad_class") if classes > 1 else None
        cmp_reg = int(self.pipeline.compare_register)
        sums, ctl, depth = self._engine(m, tag, tail=cmp_reg)
        if cmp_reg:
            # compare the accumulator registers one stage later: the accumulate adder and the
            # compare are no longer one path
            sums = self._accs
        stage = depth + cmp_reg
        pe = self.pe
        if self.popcount:
            lanes = Signal(pe * self.lane_bits)
            m.d.comb += lanes.eq(Cat(*sums))
        else:
            lanes = self._compare(m, sums, ctl, stage, tag)
        valid, _, last_s, _, final = ctl[stage][:5]
        self._output(m, lanes, valid, last_s, final)
        return m

    def _compare(self, m, sums, ctl, stage, tag):
        """The threshold compare at ``stage``: PE bits. The threshold ROM is read one cycle
        earlier (at ``ctl[stage - 1]``), and one more for each of the pipeline's
        ``rom_register`` data registers."""
        classes = len(self.class_thresholds)
        rom_reg = int(self.pipeline.rom_register)
        ctl_before = ctl[stage - 1 - rom_reg]
        n_before = ctl_before[1]
        pe, groups = self.pe, self.groups
        lo, hi = self.acc_range
        tshape = Shape.cast(range(lo, hi + 2))
        tw = tshape.width
        tsig = [Signal(tshape, name=f"thr{p}") for p in range(pe)]
        if tag is not None:
            self._class_counters(m, tag)
        if groups == 1 and classes == 1:
            m.d.comb += [tsig[p].eq(self.thresholds[p]) for p in range(pe)]
        else:
            init = []                           # word cls * groups + g: lanes of group g
            for row in self.class_thresholds:
                for g in range(groups):
                    word = 0
                    for p in range(pe):
                        word |= (row[g * pe + p] & ((1 << tw) - 1)) << (p * tw)
                    init.append(word)
            addr = n_before if tag is None else ctl_before[5] * groups + n_before
            data = _rom_read(m, "thresholds", pe * tw, init, self.roms.get("thresholds"), addr,
                             rom_reg)
            for p in range(pe):
                m.d.comb += tsig[p].eq(data[p * tw:(p + 1) * tw])
        bits = Signal(pe)
        m.d.comb += bits.eq(Cat(*[sums[p] >= tsig[p] for p in range(pe)]))
        return bits

    def _output(self, m, lanes, valid, last_s, final):
        """Collect the C/PE groups' lanes (PE · lane_bits each) into the output queue."""
        groups = self.groups
        done = Signal()
        m.d.comb += done.eq(valid & final)
        # groups 0..G-2 shift in (one clock enable for all: iCE40 tiles share one)
        full, shift = shift_in(lanes, groups, "obits", reset_less=True)
        with m.If(valid & last_s):
            m.d.sync += shift
        m.d.comb += self.o_stream.payload.eq(self._queue(m, done, full))

    def _class_counters(self, m, tag):
        """Count taken vectors per frame (output row oy, column ox; a frame is
        len(row_class) * len(col_class) vectors) and set ``tag`` to the class of the vector
        being taken: ``row_class[oy] * ncol + col_class[ox]``."""
        oh, ow = len(self.row_class), len(self.col_class)
        ncol = max(self.col_class) + 1
        oy = Signal(range(oh), name="pad_oy")
        ox = Signal(range(ow), name="pad_ox")
        with m.If(self._take):
            m.d.sync += tag.eq(const_lookup(oy, [r * ncol for r in self.row_class], tag.shape())
                               + const_lookup(ox, self.col_class, tag.shape()))
            m.d.sync += ox.eq(Mux(ox == ow - 1, 0, ox + 1))
            with m.If(ox == ow - 1):
                m.d.sync += oy.eq(Mux(oy == oh - 1, 0, oy + 1))


class ScoreUnit(_MatrixBase):
    """The last layer: binary weights, integer class scores and their argmax.

    Parameters
    ----------
    k, pe, simd, weights, input_bits
        As for :class:`MVTU` (``classes`` plays the role of channels).
    classes : int
        Number of classes n.
    mul, add : sequence of int
        ``score_c = mul_c * s_c + add_c`` with ``s = 2P - K`` (binary) or ``s = A`` (8-bit),
        kept as ``score_width``-bit two's complement (wrapping).
    score_width : int
        Bits per score (default 32).
    count, input_ram, pipeline, roms
        Transfers per input vector, where the input buffer is, the pipeline and where the
        weight ROM goes (``{"weights": style}``), as for :class:`MVTU`.

    Ports
    -----
    i_stream : In(stream.Signature(K * input_bits / count))
    o_stream : Out(stream.Signature(classes * score_width + class_width))
        Class c's score at bits [score_width*c, score_width*(c+1)); the argmax (lowest index
        wins ties; scores compared as signed ``score_width``-bit values) in the top
        ``class_width = max(1, ceil(log2(classes)))`` bits.

    Scores are held in ``score_bits`` = the fewest two's complement bits that hold every
    reachable score (from the accumulator range, mul and add; at most ``score_width``) and
    sign-extended to ``score_width`` on the output, so the argmax compares narrow values.

    The argmax runs group by group: each group's PE scores go through an argmax tree (lowest
    lane wins ties) and a running best keeps the first group's best or a later group's if
    strictly greater, so a lower class index wins ties; the scores are collected in a shift
    register beside it.

    Timing
    ------
    Exactly :class:`MVTU`'s (the same credit rule, output queue of ``slots`` results and
    one-vector input buffer) up to the accumulate stage, then: the accumulators (one stage), the
    PE lane scores ``mul·s + add`` (a register), a = ``pipeline.argmax_stages(PE)`` registers
    of the argmax tree over the lanes (one every ``pipeline.argmax_levels`` comparator levels
    and after the last), and the running best, written with the last group's scores into the
    output queue; with the pipeline's compare register and K/SIMD > 1 the compare with the
    running best is registered a stage before its update (c = 1, else 0). II = F = classes/PE *
    K/SIMD; L = ``pipeline.score_latency(SIMD, PE, K/SIMD)`` = d + 3 + r + a + c,
    ``latency = F + 2 + L``.
    """

    @quiet_on_error
    def __init__(self, k, classes, pe, simd, weights, mul, add, input_bits=1, score_width=32,
                 count=1, input_ram=None, pipeline=None, roms=None):
        self._check(k, classes, pe, simd, weights, input_bits, "classes", count, input_ram,
                    pipeline, roms)
        self.score_width = positive_int("score_width", score_width)
        self.mul = int_list("mul", mul, self.channels)
        self.add = int_list("add", add, self.channels)
        self.class_width = max(1, (self.channels - 1).bit_length())
        self.argmax_stages = self.pipeline.argmax_stages(self.pe)
        #: the running best's compare registered a stage before its update (the pipeline's
        #: compare register, with groups at least two cycles apart: K/SIMD > 1)
        self.split_compare = bool(self.pipeline.compare_register) and self.folds > 1
        lat = self.pipeline.score_latency(self.simd, self.pe, self.folds, self.input_bits)
        self.latency = self.cycles + 2 + lat
        #: results the output queue holds (:func:`~bnnforge.compiler.pipeline.output_slots`)
        self.slots = output_slots(self.cycles, lat)
        if self.input_bits == 1:
            s_lo, s_hi = -self.k, self.k
        else:
            s_lo, s_hi = self.acc_range
        ends = [mc * sv + ac for mc, ac in zip(self.mul, self.add, strict=True)
                for sv in (s_lo, s_hi)]
        need = max(max(v.bit_length() for v in ends) + 1, 2)
        #: two's complement bits the scores are held and compared in (<= score_width)
        self.score_bits = min(need, self.score_width)
        super().__init__({
            "i_stream": In(stream.Signature(self.k * self.input_bits // self.count)),
            "o_stream": Out(stream.Signature(self.channels * self.score_width
                                             + self.class_width))})

    def _lane_score(self, acc, n, p):
        """Lane ``p``'s score of group ``n`` from its accumulator: ``mul_c·s + add_c`` for
        class c = n·PE + p (one expression when every group's lane p shares mul and add)."""
        a = acc.as_signed() if Shape.cast(acc.shape()).signed else acc
        sval = 2 * a - self.k if self.input_bits == 1 else a
        pairs = [(self.mul[g * self.pe + p], self.add[g * self.pe + p])
                 for g in range(self.groups)]
        out = sval * pairs[0][0] + pairs[0][1]
        for g in range(1, self.groups):
            if pairs[g] != pairs[g - 1]:
                out = Mux(n >= g, sval * pairs[g][0] + pairs[g][1], out)
        return out

    def elaborate(self, platform):
        m = Module()
        pe, groups, classes = self.pe, self.groups, self.channels
        rw, cw, a = self.score_bits, self.class_width, self.argmax_stages
        sums, ctl, depth = self._engine(m, tail=2 + a + int(self.split_compare))
        # stage depth + 1: the accumulators hold each lane's total of the step
        v1, n1, last1, _ = ctl[depth + 1][:4]
        # the group's first flag, registered beside the lane scores (no comparator on the
        # running best's enable)
        flags = Signal(1)
        m.d.comb += flags.eq(n1 == 0)
        lane = [Signal(signed(rw), name=f"lane_score{p}", reset_less=True) for p in range(pe)]
        # loaded at a group's last step only: the free-running stages after it (argmax tree,
        # lane scores, compare) hold still between groups instead of scoring partial sums
        # every step (their energy is then once a group, as the op model counts it)
        with m.If(v1 & last1):
            m.d.sync += [lane[p].eq(self._lane_score(self._accs[p], n1, p)[:rw].as_signed())
                         for p in range(pe)]
        # stage depth + 2 ...: the argmax tree over the lanes, a register every argmax_levels
        # comparator levels and after the last (lower lane wins ties)
        lw = max(1, (pe - 1).bit_length())
        nodes = [(v, Const(p, lw)) for p, v in enumerate(lane)]
        level, stage = 0, 0
        levels = (pe - 1).bit_length()
        while len(nodes) > 1:
            level += 1
            nxt = []
            for i in range(0, len(nodes), 2):
                if i + 1 == len(nodes):
                    nxt.append(nodes[i])
                    continue
                (va, ia), (vb, ib) = nodes[i], nodes[i + 1]
                pick_b = _greater(vb, va)
                nxt.append((Mux(pick_b, vb, va), Mux(pick_b, ib, ia)))
            nodes = nxt
            if level % self.pipeline.argmax_levels == 0 or level == levels:
                stage += 1
                regs = [(Signal(signed(rw), name=f"argmax{stage}_v{i}", reset_less=True),
                         Signal(lw, name=f"argmax{stage}_i{i}", reset_less=True))
                        for i in range(len(nodes))]
                m.d.sync += [x for (rv, ri), (nv, ni) in zip(regs, nodes, strict=True)
                             for x in (rv.eq(nv), ri.eq(ni))]
                nodes = regs
        best_v, best_lane = nodes[0]
        # the lane scores beside the tree, and the running best over the groups
        scores = delay(m, None, Cat(*lane), a, "lane_scores", True)
        first_g = delay(m, None, flags, 1 + a, "group_first", True)
        stage = depth + 2 + a
        _, n, _, _, _ = ctl[stage][:5]
        cls = Signal(cw)
        m.d.comb += cls.eq(n * pe + best_lane if groups > 1 else best_lane)
        best = Signal(signed(rw), name="best", reset_less=True)
        best_c = Signal(cw, name="best_class", reset_less=True)
        if self.split_compare:
            # compare with the running best here, update it a stage later (the previous group
            # is at least two cycles ahead, so its update is in)
            gt = Signal(name="best_gt", reset_less=True)
            m.d.sync += gt.eq(_greater(best_v, best))
            cls, first_g = delay(m, None, cls, 1, "cand_class", True), \
                delay(m, None, first_g, 1, "cand_first", True)
            best_v = delay(m, None, best_v, 1, "cand_score", True)
            scores = delay(m, None, scores, 1, "cand_scores", True)
            stage += 1
        else:
            gt = _greater(best_v, best)
        valid, _, last_s, _, final = ctl[stage][:5]
        group = Signal()
        m.d.comb += group.eq(valid & last_s)
        take_new = Signal()
        m.d.comb += take_new.eq(first_g | gt)
        with m.If(group & take_new):
            m.d.sync += [best.eq(best_v), best_c.eq(cls)]
        held, shift = shift_in(scores, groups, "held_scores", reset_less=True)
        with m.If(group):
            m.d.sync += shift
        done = Signal()
        m.d.comb += done.eq(valid & final)
        word = Cat(held, Mux(take_new, cls, best_c))
        head = self._queue(m, done, word)
        # narrow scores sign-extended onto the payload, the class above them
        wide = [Signal(signed(self.score_width), name=f"o_score{c}") for c in range(classes)]
        m.d.comb += [wv.eq(head[c * rw:(c + 1) * rw].as_signed())
                     for c, wv in enumerate(wide)]
        m.d.comb += self.o_stream.payload.eq(Cat(*wide, head[classes * rw:]))
        return m
