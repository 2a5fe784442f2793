"""Switching activity of emitted RTL: toggle counts per block from a Verilator run.

:func:`run_activity` builds ``rtl_dir/*.v`` for Verilator with ``--coverage-toggle`` in its own
build folder (``rtl_dir/../sim_build/verilator-toggle``, so the cached verify builds are left
alone), streams real frames through it with :func:`bnnforge.hw.harness.run_rtl` and reads the
``coverage.dat`` the run writes. Every toggle point is one bit of one Verilog signal of one
module instance; :func:`parse_verilog` tells which signals are flip-flops (assigned in an
``always @(posedge …)`` block) and which memories there are, so the toggles split into
flip-flop toggles and net toggles (combinational signals: LUT outputs and the routing they
drive), per block. A block is the top-level submodule ``s<i>_<node>_<kind>`` (its children
count to it), and its node is the graph stage that owns it.

Verilator toggle coverage counts every change of a bit (0→1 and 1→0 both count) in a
zero-delay simulation: glitches are not seen (see :mod:`bnnforge.sim.energy` for the factor
that stands in for them). Counts cover the whole run, reset and pipeline fill included.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from .harness import read_top, run_rtl

__all__ = ["ActivityResult", "parse_coverage", "parse_verilog", "run_activity",
           "TOGGLE_ARGS"]

#: Verilator build arguments of an activity run.
TOGGLE_ARGS = ("--coverage-toggle", "--coverage-max-width", "4096")

_MODULE = re.compile(r"^module\s+(\\\S+|\w+)\s*\(", re.M)
_SEQ_BODY = re.compile(r"always\s+@\(posedge\s+[^)]*\)(.*?)(?=\n\s*(?:always|assign|end"
                       r"module|reg|wire|initial)\b)", re.S)
_ASSIGN = re.compile(r"(\\\S+|[\w$]+)\s*(?:\[[^\]]*\])?\s*<=")
_INPUT = re.compile(r"^\s*input\s+(?:\[[^\]]*\]\s+)?(\\\S+|[\w$]+)\s*;", re.M)
_MANGLED = re.compile(r"__0([0-9a-fA-F]{2})")
_MEMORY = re.compile(r"^((?:[ \t]*\(\*[^\n]*\*\)[ \t]*\n)*)\s*reg\s+(?:\[(\d+):(\d+)\]\s+)?"
                     r"(\\\S+|[\w$]+)\s*\[(\d+):(\d+)\]\s*;", re.M)
_ROM_STYLE = re.compile(r'rom_style\s*=\s*"(\w+)"')
_ASSIGN_WIRE = re.compile(r"^\s*assign\s+(\\\S+|[\w$]+)\s*=\s*(.*?);\s*$", re.M)
_OPERATOR = re.compile(r"[\^&|+\-?<>=*/%!]")
_CLOCKS = frozenset(("clk", "rst"))
_BLOCK = re.compile(r"^s(\d+)_(.+)_([a-z0-9]+)$")


def _clean(name: str) -> str:
    return name[1:] if name.startswith("\\") else name


def parse_verilog(text: str) -> dict:
    """Return ``{module name: {"ffs", "memories", "inputs", "aliases"}}`` of Amaranth-emitted
    Verilog: flip-flop signals (assigned in an ``always @(posedge …)`` block), memories
    ``{name: (width, depth, style)}`` (style ``"bram"`` or ``"logic"`` as the memory's
    ``rom_style`` attribute says, else None), input ports, and aliases (wires assigned a copy,
    slice, concatenation or inversion of other signals: the same net after synthesis, an inverter
    being absorbed into the LUT that reads it)."""
    out = {}
    starts = [(m.start(), _clean(m.group(1))) for m in _MODULE.finditer(text)]
    for i, (pos, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        body = text[pos:end]
        ffs = set()
        for block in _SEQ_BODY.finditer(body):
            ffs.update(_clean(a) for a in _ASSIGN.findall(block.group(1)))
        mems = {}
        for m in _MEMORY.finditer(body):
            width = abs(int(m.group(2)) - int(m.group(3))) + 1 if m.group(2) else 1
            depth = abs(int(m.group(6)) - int(m.group(5))) + 1
            style = _ROM_STYLE.search(m.group(1))
            style = {"block": "bram", "logic": "logic"}.get(style.group(1)) if style else None
            mems[_clean(m.group(4))] = (width, depth, style)
        inputs = {_clean(m) for m in _INPUT.findall(body)}
        aliases = set()
        for m in _ASSIGN_WIRE.finditer(body):
            rhs = re.sub(r"\[[^\]]*\]", "", re.sub(r"\\\S+", "x", m.group(2)))
            if not _OPERATOR.search(rhs):
                aliases.add(_clean(m.group(1)))
        out[name] = {"ffs": ffs, "memories": mems, "inputs": inputs, "aliases": aliases}
    return out


def parse_coverage(path: str | os.PathLike) -> list[tuple[str, str, int]]:
    """Return ``(hierarchy, signal, toggles)`` per toggle point of a Verilator coverage.dat.

    ``signal`` is the point's comment (the signal name with its bit, e.g. ``count[3]``).
    """
    points = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.startswith("C '"):
            continue
        body, _, count = line[3:].rpartition("' ")
        fields = {}
        for item in body.split("\x01"):
            if "\x02" in item:
                k, _, v = item.partition("\x02")
                fields[k] = v
        if not fields.get("page", "").startswith("v_toggle"):
            continue
        points.append((fields.get("h", ""), fields.get("o", ""), int(count)))
    return points


def _signal(comment: str) -> str:
    """The signal name of a toggle point's comment (``a[3]`` → ``a``, ``a[1][2]`` → ``a``)."""
    name = comment.strip().rpartition(":")[0] or comment.strip()
    name = _MANGLED.sub(lambda m: chr(int(m.group(1), 16)), name)
    while name.endswith("]") and "[" in name:
        name = name[:name.rindex("[")]
    return _clean(name)


class ActivityResult(dict):
    """What :func:`run_activity` measured (a dict).

    Keys: ``frames``, ``cycles`` (the run's cycles), ``cycles_per_frame`` (cycles between the
    first and the last output over frames − 1, or cycles / frames), ``blocks`` ({block: {"node",
    "ff_bits", "ff_toggles", "net_bits", "net_toggles", "memories": [(name, width, depth,
    style)]}}; the toggles are totals over the run), ``classes`` and ``scores`` (the run's answers),
    ``wall_s``.
    """


def _block_of(hier: str) -> str:
    """The block (``s<i>_<node>_<kind>``) of a hierarchy or module name; "" at the top."""
    for part in hier.split("."):
        if _BLOCK.match(part):
            return part
    return ""


def run_activity(rtl_dir: str | os.PathLike, frames: np.ndarray,
                 build_dir: str | os.PathLike | None = None) -> ActivityResult:
    """Stream ``frames`` through the design on Verilator with toggle coverage; count toggles.

    Parameters
    ----------
    rtl_dir
        Folder with the emitted Verilog and ``top.json``.
    frames
        uint8 frames as :func:`~bnnforge.hw.harness.run_rtl` takes them; back to back, the output
        always ready.
    build_dir
        The toggle build's folder (default ``rtl_dir/../sim_build/verilator-toggle``).
    """
    rtl_dir = Path(rtl_dir).resolve()
    top = read_top(rtl_dir)
    if build_dir is None:
        build_dir = rtl_dir.parent / "sim_build" / "verilator-toggle"
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    modules: dict = {}
    for src in sorted(rtl_dir.glob("*.v")):
        modules.update(parse_verilog(src.read_text()))
    fd, cov = tempfile.mkstemp(prefix="coverage-", suffix=".dat", dir=build_dir)
    os.close(fd)
    try:
        res = run_rtl(rtl_dir, frames, simulator="verilator", build_dir=build_dir,
                      extra_args=TOGGLE_ARGS, plusargs=(f"+verilator+coverage+file+{cov}",))
        points = parse_coverage(cov)
    finally:
        Path(cov).unlink(missing_ok=True)
    if not points:
        raise RuntimeError(f"the Verilator run of {rtl_dir} wrote no toggle coverage")
    blocks: dict[str, dict] = {}
    for hier, comment, count in points:
        block = _block_of(hier)
        module = _module_of(hier, modules, top["top"])
        sig = _signal(comment)
        info = modules.get(module, {"ffs": set(), "memories": {}, "inputs": set(),
                                    "aliases": set()})
        if not block or sig in _CLOCKS or sig in info["inputs"] or sig in info["aliases"] \
                or sig.startswith("$auto$"):
            continue    # top-level glue, clock, reset, input ports, aliases of other nets
        b = blocks.setdefault(block, {"node": _node_of(block), "ff_bits": 0, "ff_toggles": 0,
                                      "net_bits": 0, "net_toggles": 0, "memories": []})
        kind = "ff" if sig in info["ffs"] else "net"
        b[f"{kind}_toggles"] += count
        if comment.endswith("0->1") or "->" not in comment:
            b[f"{kind}_bits"] += 1
    for module, info in modules.items():
        block = _block_of(module)
        if block in blocks:
            for name, (width, depth, style) in sorted(info["memories"].items()):
                blocks[block]["memories"].append((name, width, depth, style))
    n = int(res["classes"].shape[0])
    out = res["out_cycles"]
    cpf = float(out[-1] - out[0]) / (n - 1) if n > 1 else float(res["cycles"]) / max(n, 1)
    return ActivityResult(frames=n, cycles=int(res["cycles"]), cycles_per_frame=cpf,
                          blocks=dict(sorted(blocks.items())), classes=res["classes"],
                          scores=res["scores"], wall_s=float(res["wall_s"]))


def _node_of(block: str) -> str:
    m = _BLOCK.match(block)
    return m.group(2) if m else ""


def _module_of(hier: str, modules: dict, top: str) -> str:
    """The module name of a coverage hierarchy (Amaranth names modules by their path)."""
    parts = [p for p in hier.split(".") if p and p != "TOP"]
    name = ".".join(parts)
    if name in modules:
        return name
    if parts and parts[0] != top and f"{top}.{name}" in modules:
        return f"{top}.{name}"
    return top if not parts or name == top else name
