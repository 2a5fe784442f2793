"""Argument checks and small helpers shared by the hardware blocks of :mod:`bnnforge.hw`.

Checks raise ``TypeError``/``ValueError`` at construction with the offending value in the message
(docs/design.md, STYLE.md); :func:`quiet_on_error` keeps a rejected component from also warning
that it was never elaborated.
"""

from __future__ import annotations

import functools

import numpy as np
from amaranth.hdl import Const, Mux

from ..compiler.memory import ROM_STYLES, rom_style

__all__ = [
    "check_input_bits",
    "const_lookup",
    "int_list",
    "pair",
    "positive_int",
    "quiet_on_error",
    "rom_attrs",
    "rom_styles",
    "silence",
    "weight_matrix",
]


def rom_attrs(width: int, depth: int, style: str | None = None) -> dict:
    """Memory attributes of a ROM of ``depth`` words of ``width`` bits in ``style`` (``None``:
    :func:`~bnnforge.compiler.memory.rom_style`'s choice without a board): ``rom_style =
    "logic"`` or ``"block"``, so that Yosys builds what the cost model priced."""
    style = rom_style(width, depth) if style is None else style
    return {"logic": {"rom_style": "logic"}, "bram": {"rom_style": "block"}}.get(style, {})


def rom_styles(roms) -> dict:
    """Check a component's ``roms`` argument: ``None`` or ``{"weights" / "thresholds":
    style}`` with styles from :data:`~bnnforge.compiler.memory.ROM_STYLES`."""
    if roms is None:
        return {}
    if not isinstance(roms, dict) or not set(roms) <= {"weights", "thresholds"} or \
            not all(v in ROM_STYLES for v in roms.values()):
        raise ValueError(f"roms must map 'weights' / 'thresholds' to one of "
                         f"{', '.join(ROM_STYLES)}, not {roms!r}")
    return dict(roms)


def quiet_on_error(init):
    """Decorate ``__init__`` so a rejected component raises without a later UnusedElaboratable
    warning (Amaranth warns about every component that is built but never elaborated)."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except Exception:
            silence(self)
            raise
    return wrapper


def silence(*components) -> None:
    """Mark components as intentionally unused (no UnusedElaboratable warning)."""
    for c in components:
        c._MustUse__silence = True


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    """Return ``value`` as an int >= 1; ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return int(value)


def pair(name: str, value, minimum: int = 1) -> tuple[int, int]:
    """Return an int or a pair of ints as a pair, each at least ``minimum``."""
    if _is_int(value):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(_is_int(v) for v in value)):
        raise TypeError(f"{name} must be an integer or a pair of integers, not {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    return int(value[0]), int(value[1])


def check_input_bits(value) -> int:
    """Return the element width of a matrix unit's input: 1 (binary) or 8 (bytes)."""
    if value not in (1, 8) or isinstance(value, bool):
        raise ValueError(f"input_bits must be 1 or 8, not {value!r}")
    return int(value)


def int_list(name: str, values, length: int) -> list[int]:
    """Return ``length`` integers (a sequence or a 1-D array) as Python ints."""
    v = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if len(v) != length:
        raise ValueError(f"{name} must hold {length} values, not {len(v)}")
    for x in v:
        if not _is_int(x):
            raise TypeError(f"{name} must be integers, not {x!r}")
    return [int(x) for x in v]


def weight_matrix(weights, channels: int, k: int) -> np.ndarray:
    """Accept (channels, K) booleans or (channels, ceil(K/8)) little-endian packed bytes."""
    w = np.asarray(weights)
    if w.ndim == 2 and w.shape == (channels, k) and (w.dtype == bool or w.dtype != np.uint8):
        if not np.all((w == 0) | (w == 1)):
            raise ValueError("weights given as a (channels, K) matrix must hold 0/1 values")
        return w.astype(bool)
    if w.ndim == 2 and w.dtype == np.uint8 and w.shape == (channels, (k + 7) // 8):
        return np.unpackbits(w, axis=-1, count=k, bitorder="little").astype(bool)
    raise ValueError(f"weights must be (channels={channels}, K={k}) bits or "
                     f"({channels}, {(k + 7) // 8}) packed bytes, not shape {w.shape}")


def const_lookup(index, values: list[int], shape):
    """``values[index]`` over constants, as a chain of compares (``index >= i``) and muxes.

    One mux per change between neighbours, so a list made of a few runs of equal values (pad
    classes: border, interior, border) costs a handful of comparators. Unlike an ``Array``
    lookup, which Yosys writes as a ``case`` in an ``always @*`` block that Icarus does not
    evaluate until ``index`` first changes, it is emitted as continuous assignments, so a
    4-state simulator sees no X at time 0. An index past the end gives the last value.
    """
    out = Const(values[0], shape)
    for i in range(1, len(values)):
        if values[i] != values[i - 1]:
            out = Mux(index >= i, Const(values[i], shape), out)
    return out
