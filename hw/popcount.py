"""XNOR-popcount lanes on carry chains: P = popcount(~(x ^ w)), pipelined, few LUTs.

The binary lanes of :class:`~bnnforge.hw.matrix.MVTU` and
:class:`~bnnforge.hw.matrix.ScoreUnit`::

    total, registers = popcount_lane(m, x, w, en, name, levels_per_stage, family="ecp5")
    assert registers == lane_stages(len(x), levels_per_stage)

(:func:`~bnnforge.compiler.pipeline.lane_stages`: the latency contract, which the timing
model reads from :mod:`bnnforge.compiler.pipeline`).

The tree
--------
The sum is built from ripple-carry *segments* ``A + B + c`` laid end to end in carry chains.
``A`` and ``B`` are the two sums of the level below (or raw terms), ``c`` one more raw term
brought in as the segment's carry-in. A tree of ``D = lane_levels(n) = floor(log2 n)`` such
levels holds up to ``2**(D+1) - 1`` terms (level 1: ``t + t + t``, 2 bits; level l: two
l-bit sums + a term, l + 1 bits), which is one level fewer than a binary adder tree needs for
any n that is not a power of two. A register follows every ``levels_per_stage``-th level and
the last, so the latency is ``lane_stages(n, L) = ceil(floor(log2 n) / L)`` (0 for n = 1).

The exact shape (how many terms each segment takes, which raw terms wait in a register for a
later carry-in slot) comes from a small dynamic programme minimising
``cells + ff_weight * flip-flops`` for the given n, D and L; it only moves terms between
segments, never the level count, so the latency formula holds for every n.

ECP5 (``family="ecp5"``): one CCU2C half is ``P = f(A, B, C, D)`` (a full LUT4),
``G = f(A, B, 0, 0)``, ``S = P ^ cin``, ``cout = P ? cin : G`` (Lattice's CCU2C simulation
model; Yosys's own adder mapping relies on the same). So a segment bit takes two raw XNOR
terms straight from x and w (``P = xnor ^ xnor``, no LUT in front), a segment's carry-in is
injected by one half whose P is 0 and whose G is the term's XNOR, and that same half reads the
carry-out of the segment before it (``S = cin``). Level 1 is ``t + t + t`` in two halves (one
CCU2C) for three terms; there is no LUT4 at all. A 4-input bit forces its segment into
complemented polarity (xnor(0, 0) = 1 reaches G); the consumers' halves undo it at no cost
(their G tables are free since their D input is tied to 1).
nextpnr-ecp5 adds a feed-in and a feed-out CCU2C to every carry chain (4 LUT4 equivalents);
the lane uses both (the chain's CIN constant is the first segment's carry-in, the last COUT
is read by the feed-out), and :func:`lane_cost` counts them ("placed_lut4").
Measured (Yosys 0.70 synth_ecp5, nextpnr-ecp5 --85k --speed 6): about 1.5 LUT4 equivalents
per input bit after synthesis, 2.0 (max_chain 8) to 2.45 (max_chain 4) after placement,
against 4.1-4.7 for the binary adder tree.

iCE40 (``family="ice40"``): the carry is ``maj(I1, I2, CI)`` on the LUT's own inputs, so XNOR
terms must be LUT outputs first: level 1 makes each pair of terms a 2-bit number in two LUT4s
(``s = t0 ^ t1``, ``c = t0 & t1``), higher levels are SB_CARRY segments whose carry-in is an
XNOR LUT injected by a cell with ``I1 = I2 = t`` (its LUT reads the previous carry-out).

Primitives: the cells become vendor primitives (``CCU2C``; ``SB_LUT4`` + ``SB_CARRY``) when the
lane is elaborated with a platform of that family (``platform.family`` "ecp5" / "iCE40");
otherwise (simulation, ``verilog.convert`` without platform, another family) the same network
is built from behavioural logic with the same function and latency. ``primitives=True/False``
forces either.

Chains are cut every ``max_chain`` cells (CCU2C on ECP5, logic cells on iCE40): nextpnr times
the carry path through the inject halves although it never propagates (P = 0 there), so a long
chain shows as a long path. Default: 8 with one adder level per stage, 4 otherwise (measured,
8 lanes on an LFE5U-85F-6: 165-178 MHz at L = 2 for N = 49..196; 8 gives 150-191 MHz).
"""

from __future__ import annotations

from functools import lru_cache

from amaranth.hdl import Cat, Const, Elaboratable, Instance, Module, Mux, Signal

from ..compiler.pipeline import lane_levels, lane_stages

__all__ = ["lane_cost", "popcount_lane"]


def popcount_lane(m: Module, x, w, en, name: str, levels_per_stage: int, *,
                  family: str = "ecp5", max_chain: int | None = None,
                  primitives: bool | None = None, ff_weight: float = 0.5,
                  levels: int | None = None):
    """Add a lane computing popcount(~(x ^ w)) to ``m``; return ``(sum, registers)``.

    ``x``, ``w``: Values of n bits. ``en``: clock enable of the lane's (reset-less) registers.
    ``sum``: the registered count, unsigned, ``n.bit_length()`` bits, valid ``registers`` =
    :func:`lane_stages` (n, levels_per_stage) enabled cycles after x, w. ``family``: "ecp5" or
    "ice40" (the tree shape; the latency is the same for both). ``max_chain``: cells per carry
    chain (CCU2C on ECP5, logic cells on iCE40; default 8 for levels_per_stage 1, else 4).
    ``primitives``: None = vendor primitives when the platform is of ``family``.
    ``ff_weight``: flip-flop price in cells for the shape search. ``levels``: adder levels
    (default and minimum :func:`lane_levels` (n)); ``levels=(n - 1).bit_length()`` gives the
    latency of the binary adder tree, ceil(ceil(log2 n) / L), for an unchanged timing model.
    """
    n = len(x)
    if len(w) != n:
        raise ValueError(f"x and w differ in width ({n} / {len(w)})")
    _check(n, levels_per_stage, family, max_chain, levels)
    if n == 0:
        return Const(0, 1), 0
    if n == 1:
        return ~(x ^ w), 0
    lane = _Lane(n, levels_per_stage, family, max_chain, primitives, ff_weight, name, levels)
    m.submodules[f"{name}_popcount"] = lane
    m.d.comb += [lane.x.eq(x), lane.w.eq(w), lane.en.eq(en)]
    if lane.registers != lane_stages(n, levels_per_stage, levels):   # the latency contract
        raise RuntimeError(f"a lane of {n} terms built {lane.registers} registers, not "
                           f"{lane_stages(n, levels_per_stage, levels)}")
    return lane.sum, lane.registers


def _check(n: int, levels_per_stage, family, max_chain, levels) -> None:
    """The arguments of :func:`popcount_lane` and :func:`lane_cost`, each with its value."""
    if isinstance(levels_per_stage, bool) or not isinstance(levels_per_stage, int) or \
            levels_per_stage < 1:
        raise ValueError(f"levels_per_stage must be at least 1, not {levels_per_stage!r}")
    if family not in ("ecp5", "ice40"):
        raise ValueError(f"family must be 'ecp5' or 'ice40', not {family!r}")
    if max_chain is not None and (isinstance(max_chain, bool) or not isinstance(max_chain, int)
                                  or max_chain < 1):
        raise ValueError(f"max_chain must be a positive integer or None, not {max_chain!r}")
    if levels is not None and levels < lane_levels(n):
        raise ValueError(f"{n} terms need at least {lane_levels(n)} levels, not {levels}")


def lane_cost(n: int, levels_per_stage: int, family: str = "ecp5", **kw) -> dict:
    """Resources of one lane, for estimates: ``{"cells": CCU2C (ECP5) or logic cells =
    SB_LUT4 (iCE40), "lut4": LUT4 equivalents as synthesis counts them (2 per CCU2C; 1 per
    iCE40 cell, its SB_CARRY rides along), "placed_lut4": the same after nextpnr (ECP5: + one
    feed-in and one feed-out CCU2C per carry chain), "ffs": flip-flops}``."""
    _check(n, levels_per_stage, family, kw.get("max_chain"), kw.get("levels"))
    if n <= 1:
        return {"cells": 0, "lut4": 0, "placed_lut4": 0, "ffs": 0}
    if n < 4:           # two or three terms: behavioural logic and the registers
        regs = lane_stages(n, levels_per_stage, kw.get("levels"))
        return {"cells": 2, "lut4": 2, "placed_lut4": 2, "ffs": regs * n.bit_length()}
    lane = _Lane(n, levels_per_stage, family, kw.get("max_chain"), True,
                 kw.get("ff_weight", 0.5), "cost", kw.get("levels"))
    module = lane.elaborate(None)
    lane._MustUse__silence = module._MustUse__silence = True    # built to be counted
    if family == "ecp5":
        lut4 = 2 * lane._ncell
        return {"cells": lane._ncell, "lut4": lut4,
                "placed_lut4": lut4 + _ECP5_CHAIN_COST * lane._nchains, "ffs": lane._ffs}
    return {"cells": lane._ncell, "lut4": lane._ncell, "placed_lut4": lane._ncell,
            "ffs": lane._ffs}


# --------------------------------------------------------------------------------------------
# planning: a dynamic programme over (terms, level)

def _plan(n, D, L, family, lam):
    """Tree nodes: ("raw",) one term (x_i, w_i) available at that level (delayed through the
    registers on the way); ("pass", node) a sum carried up one level; ("pair", l) two terms as
    a 2-bit number in two LUT4s (iCE40, level 1); ("add", l, a, b, cin) a segment at level l
    adding nodes a, b (b may be None) of level l - 1 and, with cin = 1, one more raw term."""
    regs_upto = [0] * (D + 1)
    for lv in range(1, D + 1):
        regs_upto[lv] = regs_upto[lv - 1] + (lv % L == 0 or lv == D)

    def isreg(lv):
        return lv % L == 0 or lv == D

    def width(c):
        return 1 if c == 1 else c.bit_length()

    @lru_cache(None)
    def best(c, lv):
        # (score, cells, ffs, node) for the sum of c terms available after level lv
        if c == 1:
            ff = 2 * regs_upto[lv]
            return (lam * ff, 0, ff, ("raw",))
        if lv == 0:
            return None
        cands = []
        p = best(c, lv - 1)
        if p is not None:
            ff = c.bit_length() if isreg(lv) else 0
            cands.append((p[0] + lam * ff, p[1], p[2] + ff, ("pass", p[3])))
        if family == "ice40" and c == 2:
            ff = (2 if isreg(lv) else 0) + 4 * regs_upto[lv - 1]
            cands.append((2 + lam * ff, 2, ff, ("pair", lv)))
        for cc in (0, 1):
            rest = c - cc
            for ca in range((rest + 1) // 2, rest + 1):
                cb = rest - ca
                if ca == 0 or (family == "ice40" and ca == 1 and cb == 0):
                    continue
                a = best(ca, lv - 1)
                b = best(cb, lv - 1) if cb else (0, 0, 0, None)
                if a is None or b is None:
                    continue
                k = max(width(ca), width(cb) if cb else 0)
                if family == "ecp5":
                    cells = 2 if (ca == 1 and cb == 1) else 1 + k
                else:   # inject + k bits + an XNOR LUT per raw operand / carry-in
                    cells = 1 + k + cc + (ca == 1) + (cb == 1)
                ff = (c.bit_length() if isreg(lv) else 0) + (2 * regs_upto[lv - 1] if cc else 0)
                cands.append((a[0] + b[0] + cells + lam * ff, a[1] + b[1] + cells,
                              a[2] + b[2] + ff, ("add", lv, a[3], b[3], cc)))
        if not cands:
            return None
        return min(cands, key=lambda t: (t[0], t[2]))

    r = best(n, D)
    best.cache_clear()
    return r


def _count(node):
    if node is None:
        return 0
    if node[0] == "raw":
        return 1
    if node[0] == "pass":
        return _count(node[1])
    if node[0] == "pair":
        return 2
    return _count(node[2]) + _count(node[3]) + node[4]


def _lut(fn):
    """16-bit LUT table of fn(a, b, c, d) (a = LSB of the index)."""
    init = 0
    for i in range(16):
        init |= (fn(i & 1, i >> 1 & 1, i >> 2 & 1, i >> 3 & 1) & 1) << i
    return init


def _xnor(a, b):
    return 1 - (a ^ b)


# --------------------------------------------------------------------------------------------
# the lane

class _Lane(Elaboratable):
    def __init__(self, n, L, family, max_chain, primitives, lam, name, levels=None):
        self.n, self.L, self.family, self.primitives, self.name = n, L, family, primitives, name
        self.max_chain = max_chain or (8 if L == 1 else 4)
        self.D = levels or lane_levels(n)
        self.x = Signal(n, name=f"{name}_x")
        self.w = Signal(n, name=f"{name}_w")
        self.en = Signal(name=f"{name}_en")
        self.sum = Signal(n.bit_length(), name=f"{name}_sum")
        self.registers = sum(1 for lv in range(1, self.D + 1) if self._isreg(lv))
        if n >= 4:
            _, self.cells, self.ffs, self.tree = _plan(n, self.D, L, family, lam)

    def _isreg(self, lv):
        return lv % self.L == 0 or lv == self.D

    def _stage(self, m, e, name, reg):
        s = Signal(name=f"{self.name}_{name}", reset_less=True)
        if reg:
            self._ffs += 1
            with m.If(self.en):
                m.d.sync += s.eq(e)
        else:
            m.d.comb += s.eq(e)
        return s

    def elaborate(self, platform):
        m = Module()
        n = self.n
        if n < 4:       # 2 or 3 terms: plain logic, then the registers
            t = ~(self.x ^ self.w)
            v = sum(t[i] for i in range(n))
            for i in range(self.registers):
                r = self.sum if i == self.registers - 1 else \
                    Signal(n.bit_length(), name=f"{self.name}_d{i}", reset_less=True)
                with m.If(self.en):
                    m.d.sync += r.eq(v)
                v = r
            return m
        prims = self.primitives
        if prims is None:
            fam = str(getattr(platform, "family", "") or "").lower()
            prims = fam == "ecp5" if self.family == "ecp5" else fam in ("ice40", "ice5")
        self._prims = prims
        self._ffs = 0
        self._nchains = 0
        self._terms = iter(range(n))
        self._k = 0
        self._ncell = 0
        self._segments = {lv: [] for lv in range(1, self.D + 1)}
        top = self._walk(m, self.tree, self.D)
        if self.family == "ecp5":
            self._emit_ecp5(m)
            assert top["pol"] == 0
        else:
            self._emit_ice40(m)
        m.d.comb += self.sum.eq(Cat(*top["reg"][:n.bit_length()]))
        return m

    # -- the tree walk: segments per level, registers, delayed raw terms ----------------------

    def _raw(self, m, level):
        i = next(self._terms)
        xv, wv = self.x[i], self.w[i]
        for lv in range(1, level + 1):
            if self._isreg(lv):
                xv = self._stage(m, xv, f"rx{i}_l{lv}", True)
                wv = self._stage(m, wv, f"rw{i}_l{lv}", True)
        return {"kind": "raw", "x": xv, "w": wv}

    def _walk(self, m, node, level):
        """Returns {"kind": "raw", x, w} or {"kind": "num", "reg": [bits], "pol": polarity}
        (the true value of bit j is reg[j] ^ pol)."""
        kind = node[0]
        if kind == "raw":
            return self._raw(m, level)
        if kind == "pass":
            v = self._walk(m, node[1], level - 1)
            if v["kind"] == "raw" or not self._isreg(level):
                return v
            k = self._k = self._k + 1
            return {"kind": "num", "pol": v["pol"],
                    "reg": [self._stage(m, s, f"p{level}_{k}_{j}", True)
                            for j, s in enumerate(v["reg"])]}
        k = self._k = self._k + 1
        reg = self._isreg(level)
        if kind == "pair":          # iCE40 level 1: two terms -> (t0 ^ t1, t0 & t1)
            r0, r1 = self._raw(m, level - 1), self._raw(m, level - 1)
            outs = []
            for fn, sfx in ((lambda a, b, c, d: _xnor(a, b) ^ _xnor(c, d), "s"),
                            (lambda a, b, c, d: _xnor(a, b) & _xnor(c, d), "c")):
                o = self._lc(m, _lut(fn), (r0["x"], r0["w"], r1["x"], r1["w"]), None)[0]
                outs.append(self._stage(m, o, f"h{level}_{k}{sfx}", reg))
            return {"kind": "num", "pol": 0, "reg": outs}
        _, lv, a, b, cc = node
        A = self._walk(m, a, lv - 1)
        B = self._walk(m, b, lv - 1) if b is not None else None
        cin = self._raw(m, lv - 1) if cc else None
        wd = (_count(a) + _count(b) + cc).bit_length()
        out = [Signal(name=f"{self.name}_s{lv}_{k}_{j}") for j in range(wd)]
        absorbing = (self.family == "ecp5" and A["kind"] == "raw" and B is not None
                     and B["kind"] == "raw")
        seg = {"A": A, "B": B, "cin": cin, "out": out, "pol": int(absorbing)}
        self._segments[lv].append(seg)
        return {"kind": "num", "pol": seg["pol"],
                "reg": [self._stage(m, s, f"r{lv}_{k}_{j}", reg) for j, s in enumerate(out)]}

    # -- ECP5 ------------------------------------------------------------------------------

    @staticmethod
    def _items(v):
        if v is None:
            return []
        if v["kind"] == "raw":
            return [("raw", v["x"], v["w"])]
        return [("bit", s, v["pol"]) for s in v["reg"]]

    def _ecp5_segment(self, seg):
        """Halves (inputs A..D, INIT, S target) of a segment, its inject half first; and the
        signal that reads its carry-out (or None)."""
        pol = seg["pol"]
        zero, one = Const(0, 1), Const(1, 1)
        cin = seg["cin"]
        if cin is not None:      # P = 0 (D = 1), G = xnor(A, B) ^ pol
            halves = [((cin["x"], cin["w"], zero, one),
                       _lut(lambda a, b, c, d: 0 if d else _xnor(a, b) ^ pol), None)]
        else:
            halves = [((zero, zero, zero, one), _lut(lambda a, b, c, d: 0 if d else pol), None)]
        ai, bi = self._items(seg["A"]), self._items(seg["B"])
        k = max(len(ai), len(bi))
        for j in range(k):
            p = ai[j] if j < len(ai) else None
            q = bi[j] if j < len(bi) else None
            if p is None or (q is not None and q[0] == "raw" and p[0] != "raw"):
                p, q = q, p          # the generate operand sits on A, B
            tgt = seg["out"][j] if j < len(seg["out"]) else None
            if p[0] == "raw" and q is not None and q[0] == "raw":
                # two raw terms: four inputs; G = f(A,B,0,0) = xnor(A,B) ^ xnor(0,0) needs pol 1
                assert pol == 1
                halves.append(((p[1], p[2], q[1], q[2]),
                               _lut(lambda a, b, c, d: _xnor(a, b) ^ _xnor(c, d)), tgt))
                continue

            def item(it):
                if it is None:
                    return [], (lambda: 0)
                if it[0] == "raw":
                    return [it[1], it[2]], _xnor
                return [it[1]], (lambda v, inv=it[2]: v ^ inv)
            ia, fa = item(p)
            ib, fb = item(q)
            ins = ia + ib + [zero] * (3 - len(ia) - len(ib))
            na, nb = len(ia), len(ib)

            def f(a, b, c, d, na=na, nb=nb, fa=fa, fb=fb):
                v = (a, b, c)
                va = fa(*v[:na])
                vb = fb(*v[na:na + nb])
                return (va ^ vb) if d else (va ^ pol)    # P with D = 1; G = true a ^ pol
            halves.append(((ins[0], ins[1], ins[2], one), _lut(f), tgt))
        read = seg["out"][k] if k < len(seg["out"]) else None
        return halves, read

    def _emit_ecp5(self, m):
        """Lay each level's segments into chains. nextpnr-ecp5 puts a feed-in CCU2C in front
        of every chain (its CIN is always connected: Yosys's abc9 ties an open one to 0) and a
        feed-out CCU2C behind it (its last COUT likewise). Both are used: the chain's CIN
        constant is the first segment's carry-in when it has no carry-in term (so that
        segment needs no inject half), and the last COUT is the last segment's carry-out (the
        feed-out reads it, so the chain needs no read half). Every chain costs those 2 CCU2C
        (4 LUT4 equivalents), which the packing weighs against shorter carry paths."""
        zero, one = Const(0, 1), Const(1, 1)
        for lv in range(1, self.D + 1):
            segs = self._segments[lv]
            built = [self._ecp5_segment(s) for s in segs]
            sizes = [len(h) for h, _ in built]
            reads = [False] * len(segs)          # the feed-out reads the last carry-out
            skip = [s["cin"] is None for s in segs]
            for group in _pack(sizes, reads, skip, 2 * self.max_chain, even=True,
                               chain_cost=_ECP5_CHAIN_COST):
                chain, prev, cin_const = [], None, 0
                self._nchains += 1
                for gi in group:
                    hs, rd = list(built[gi][0]), built[gi][1]
                    if not chain and skip[gi]:
                        hs = hs[1:]                  # CIN (a constant) is its carry-in
                        cin_const = segs[gi]["pol"]  # true 0 in the segment's polarity
                    elif chain:
                        hs[0] = (hs[0][0], hs[0][1], prev)   # inject half reads carry-out
                    chain += hs
                    prev = rd
                if len(chain) % 2:
                    # an odd chain gets a first half with P = 0, G = the carry-in constant (a
                    # padding half at the end would put its ~carry on S, which abc9 then
                    # prefers to COUT, adding an inverter LUT)
                    chain.insert(0, ((zero, zero, zero, one),
                                     _lut(lambda a, b, c, d, k=cin_const: 0 if d else k), None))
                cin = Const(cin_const, 1)
                for i in range(0, len(chain), 2):
                    last = i + 2 == len(chain)
                    cin = self._ccu2c(m, chain[i], chain[i + 1], cin, prev if last else None)

    def _ccu2c(self, m, h0, h1, cin, cout_target):
        (i0, init0, t0), (i1, init1, t1) = h0, h1
        s0, s1, cout = Signal(), Signal(), Signal()
        if self._prims:
            self._ncell += 1
            m.submodules[f"{self.name}_ccu{self._ncell}"] = Instance(
                "CCU2C", p_INIT0=Const(init0, 16), p_INIT1=Const(init1, 16),
                p_INJECT1_0="NO", p_INJECT1_1="NO",
                i_A0=i0[0], i_B0=i0[1], i_C0=i0[2], i_D0=i0[3],
                i_A1=i1[0], i_B1=i1[1], i_C1=i1[2], i_D1=i1[3],
                i_CIN=cin, o_S0=s0, o_S1=s1, o_COUT=cout)
        else:
            c0 = Signal()
            p0 = Const(init0, 16).bit_select(Cat(*i0), 1)
            p1 = Const(init1, 16).bit_select(Cat(*i1), 1)
            g0 = Const(init0 & 15, 4).bit_select(Cat(i0[0], i0[1]), 1)
            g1 = Const(init1 & 15, 4).bit_select(Cat(i1[0], i1[1]), 1)
            m.d.comb += [s0.eq(p0 ^ cin), c0.eq(Mux(p0, cin, g0)),
                         s1.eq(p1 ^ c0), cout.eq(Mux(p1, c0, g1))]
        if t0 is not None:
            m.d.comb += t0.eq(s0)
        if t1 is not None:
            m.d.comb += t1.eq(s1)
        if cout_target is not None:
            m.d.comb += cout_target.eq(cout)
        return cout

    # -- iCE40 -----------------------------------------------------------------------------

    def _lc(self, m, init, ins, ci, carry=False):
        """One logic cell: LUT4 on ins (I0..I3, None = 0) and, with carry, SB_CARRY on I1, I2,
        ci. Returns (O, CO)."""
        ins = [Const(0, 1) if v is None else v for v in ins]
        o, co = Signal(), Signal()
        if self._prims:
            self._ncell += 1
            m.submodules[f"{self.name}_lut{self._ncell}"] = Instance(
                "SB_LUT4", p_LUT_INIT=Const(init, 16),
                i_I0=ins[0], i_I1=ins[1], i_I2=ins[2], i_I3=ins[3], o_O=o)
            if carry:
                m.submodules[f"{self.name}_carry{self._ncell}"] = Instance(
                    "SB_CARRY", i_I0=ins[1], i_I1=ins[2], i_CI=ci, o_CO=co)
        else:
            m.d.comb += o.eq(Const(init, 16).bit_select(Cat(*ins), 1))
            if carry:
                m.d.comb += co.eq((ins[1] & ins[2]) | (ci & (ins[1] | ins[2])))
        return o, co

    def _emit_ice40(self, m):
        zero = Const(0, 1)
        xnor_init = _lut(lambda a, b, c, d: _xnor(a, b))
        for lv in range(1, self.D + 1):
            segs = self._segments[lv]
            ops = []
            for s in segs:
                def bits(v):
                    if v is None:
                        return []
                    if v["kind"] == "raw":
                        return [self._lc(m, xnor_init, (v["x"], v["w"], None, None), None)[0]]
                    return v["reg"]
                a, b = bits(s["A"]), bits(s["B"])
                c = (self._lc(m, xnor_init, (s["cin"]["x"], s["cin"]["w"], None, None), None)[0]
                     if s["cin"] is not None else None)
                ops.append((a, b, c, s["out"]))
            sizes = [1 + max(len(a), len(b)) for a, b, _, _ in ops]
            reads = [len(o) > max(len(a), len(b)) for a, b, _, o in ops]
            skip = [c is None for _, _, c, _ in ops]
            for group in _pack(sizes, reads, skip, self.max_chain, even=False):
                ci, prev = zero, None
                for gi in group:
                    a, b, c, out = ops[gi]
                    k = max(len(a), len(b))
                    if prev is not None or c is not None or ci is not zero:
                        t = c if c is not None else zero
                        # inject: CO = maj(t, t, CI) = t; the LUT reads the previous carry-out
                        o, ci = self._lc(m, _lut(lambda a_, b_, c_, d_: d_),
                                         (None, t, t, ci), ci, carry=True)
                        if prev is not None:
                            m.d.comb += prev.eq(o)
                    for j in range(k):
                        aj = a[j] if j < len(a) else zero
                        bj = b[j] if j < len(b) else zero
                        o, ci = self._lc(m, _lut(lambda a_, b_, c_, d_: b_ ^ c_ ^ d_),
                                         (None, aj, bj, ci), ci, carry=True)
                        if j < len(out):
                            m.d.comb += out[j].eq(o)
                    prev = out[k] if k < len(out) else None
                if prev is not None:
                    o, _ = self._lc(m, _lut(lambda a_, b_, c_, d_: d_), (None, None, None, ci), ci)
                    m.d.comb += prev.eq(o)


#: LUT4 equivalents nextpnr-ecp5 adds per carry chain (a feed-in and a feed-out CCU2C)
_ECP5_CHAIN_COST = 4


def _pack(sizes, reads, skip, maxlen, even, chain_cost=0):
    """Cut the segments of one level into chains of at most maxlen cells: DP over contiguous
    runs of a few orders, cost = cells (+1 read cell when the last segment's carry-out is used,
    -1 when the first needs no carry-in, rounded up to even for CCU2C pairs)."""
    def order_group(g):
        g = list(g)
        first = next((i for i in g if skip[i]), None)
        if first is not None:
            g.remove(first)
        last = next((i for i in g if not reads[i]), None)
        if last is not None:
            g.remove(last)
        return ([first] if first is not None else []) + g + ([last] if last is not None else [])

    def length(g):
        g = order_group(g)
        t = sum(sizes[i] for i in g) - skip[g[0]] + reads[g[-1]]
        return t + (t & 1) if even else t

    def cost(g):
        return length(g) + chain_cost

    idx = list(range(len(sizes)))
    orders = [sorted(idx, key=lambda i: (sizes[i], reads[i], skip[i])),
              sorted(idx, key=lambda i: (-sizes[i], reads[i], skip[i])),
              sorted(idx, key=lambda i: (sizes[i] % 2, reads[i], sizes[i])),
              sorted(idx, key=lambda i: (not skip[i], sizes[i]))]
    best = None
    for order in orders:
        cnt = len(order)
        acc = [0] + [float("inf")] * cnt
        back = [0] * (cnt + 1)
        for i in range(1, cnt + 1):
            for j in range(i - 1, -1, -1):
                if length(order[j:i]) > maxlen and j < i - 1:
                    break
                c = cost(order[j:i])
                if acc[j] + c < acc[i]:
                    acc[i], back[i] = acc[j] + c, j
        if best is None or acc[cnt] < best[0]:
            groups, i = [], cnt
            while i:
                groups.append(order_group(order[back[i]:i]))
                i = back[i]
            best = (acc[cnt], groups[::-1])
    return best[1]
