"""A build folder's ``report.html``: report.json as one static page a person can read.

The page is plain HTML5 with inline CSS (no scripts, fonts or network), every value from the
report HTML-escaped, and deterministic: the same report and files give byte-identical HTML.
Missing steps read "not run" and missing keys "-", so partial and older reports render too.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from .buildfolder import read_report
from .compiler.serialize import atomic_write_bytes

__all__ = ["render_report_html", "write_report_html"]

#: The plots ``bnnforge sim`` draws beside report.json, with their captions.
_PLOTS = (("sim_cycles.png", "per-layer cycles per frame"),
          ("sim_energy.png", "energy per frame by component"))

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border: 1px solid #ddd; text-align: left; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.bottleneck td { background: #fde2e2; font-weight: bold; }
tr.total td { font-weight: bold; border-top: 2px solid #999; }
.missing { color: #888; font-style: italic; }
.bad { color: #b00020; font-weight: bold; }
.good { color: #1b7f3b; }
.error { border: 2px solid #b00020; background: #fff0f0; padding: 0.6em 1em; margin: 1em 0; }
.error pre { white-space: pre-wrap; margin: 0.4em 0 0; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""

NOT_RUN = "not run"


# -- value formatting -------------------------------------------------------------------------
def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value, digits: int | None = None) -> str:
    """``value`` with thousands separators: ``digits`` decimals, or none for whole numbers."""
    if value is None:
        return "-"
    if not _is_num(value):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if digits is None:
        digits = 0 if float(value).is_integer() else 2
    return f"{value:,.{digits}f}"


def _pct(fraction, digits: int = 2) -> str:
    """A fraction (0..1) as a percentage."""
    return f"{100 * fraction:.{digits}f}%" if _is_num(fraction) else "-"


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if isinstance(shape, list) and shape else "-"


def _yes_no(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


# -- HTML pieces (every cell's text is escaped here) ------------------------------------------
def _table(header: list[str], rows: list[tuple[list, str]], numeric: set[int] = frozenset()
           ) -> str:
    """A table; ``rows`` are ``(cells, css_class)``; columns in ``numeric`` align right."""
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"]
    for cells, cls in rows:
        attr = f' class="{_esc(cls)}"' if cls else ""
        tds = "".join(f'<td class="n">{_esc(c)}</td>' if i in numeric else f"<td>{_esc(c)}</td>"
                      for i, c in enumerate(cells))
        out.append(f"<tr{attr}>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


# -- sections ---------------------------------------------------------------------------------
def _summary(report: dict) -> str:
    m, c = _dict(report.get("model")), _dict(report.get("compile"))
    s, v, b = _dict(report.get("sim")), _dict(report.get("verify")), _dict(report.get("build"))
    has = {k: isinstance(report.get(k), dict) for k in ("model", "compile", "sim", "verify",
                                                         "build")}
    rows: list[tuple[str, str, str]] = []

    def add(label: str, text: str, cls: str = "") -> None:
        rows.append((label, text, cls))

    add("model", str(m.get("name") or "-") if has["model"] else NOT_RUN)
    dataset, frames = m.get("dataset"), m.get("frames")
    if dataset is None:
        add("dataset", "-")
    elif _is_num(frames) and frames:
        add("dataset", f"{dataset} ({_num(frames)} held-out frames)")
    else:
        add("dataset", str(dataset))
    if m.get("accuracy_torch") is None and m.get("accuracy_reference") is None:
        add("accuracy", "-")
    else:
        add("accuracy", f"torch {_pct(m.get('accuracy_torch'))}, "
                        f"hardware {_pct(m.get('accuracy_reference'))}")
    dis = m.get("disagreements")
    add("disagreements", _num(dis), "bad" if _is_num(dis) and dis > 0 else "")
    if has["build"] and b.get("board"):
        add("board", f"{b.get('board')} {b.get('device') or ''}".strip())
    elif has["compile"]:
        add("board", str(c.get("board")) if c.get("board") else "none (generic clock)")
    else:
        add("board", NOT_RUN)

    if has["sim"]:
        add("cycles/frame", _num(s.get("cycles_per_frame")))
        add("bottleneck", str(s.get("bottleneck") or "-"))
        add("frames/s", _num(s.get("fps"), 0))
    elif has["compile"]:
        add("cycles/frame", f"{_num(c.get('cycles_per_frame'))} (compile estimate)")
        add("bottleneck", str(c.get("bottleneck") or "-"))
        add("frames/s", f"{NOT_RUN} (bnnforge sim)")
    else:
        for label in ("cycles/frame", "bottleneck", "frames/s"):
            add(label, NOT_RUN)
    clock = s.get("clock_mhz", c.get("clock_mhz"))
    add("clock", f"{_num(clock, 2)} MHz" if _is_num(clock) else "-")
    if has["sim"]:
        lat = s.get("latency_cycles")
        sclock = s.get("clock_mhz")
        us = f" = {_num(lat / sclock, 2)} µs" if _is_num(lat) and _is_num(sclock) and sclock \
            else ""
        add("latency", f"{_num(lat)} cycles{us}" if _is_num(lat) else "-")
        energy = s.get("energy_nj_per_frame")
        add("energy", f"{_num(energy, 2)} nJ/frame (estimate)" if _is_num(energy) else "-")
    else:
        add("latency", f"{NOT_RUN} (bnnforge sim)")
        add("energy", f"{NOT_RUN} (bnnforge sim)")

    if has["verify"]:
        vm, cm = v.get("value_mismatches"), v.get("cycle_mismatches")
        bad = (_is_num(vm) and vm > 0) or (_is_num(cm) and cm > 0)
        known = _is_num(vm) and _is_num(cm)
        add("RTL check", f"{_num(v.get('frames'))} frames on {v.get('simulator') or '-'}: "
                         f"{_num(vm)} value, {_num(cm)} cycle mismatches",
            "bad" if bad else "good" if known else "")
    else:
        add("RTL check", f"{NOT_RUN} (bnnforge verify)")

    if has["build"] and b.get("error"):
        add("resources", "build failed (see above)", "bad")
        add("timing", "build failed (see above)", "bad")
    elif has["build"]:
        add("LUTs", f"{_num(b.get('luts_used'))} / {_num(b.get('luts_total'))}")
        add("FFs", _num(b.get("ffs_used")))
        add("BRAM", f"{_num(b.get('bram_used'))} / {_num(b.get('bram_total'))}")
        fmax, bclock = b.get("fmax_mhz"), b.get("clock_mhz")
        if _is_num(fmax):
            met = _is_num(bclock) and fmax >= bclock
            add("Fmax", f"{_num(fmax, 2)} MHz at a {_num(bclock, 2)} MHz clock",
                "good" if met else "bad" if _is_num(bclock) else "")
        else:
            add("Fmax", "-")
    else:
        est = _dict(c.get("resources_estimate"))
        if est:
            add("resources", f"about {_num(est.get('luts'))} LUTs, {_num(est.get('brams'))} "
                             "BRAM (compile estimate); build " + NOT_RUN)
        else:
            add("resources", f"{NOT_RUN} (bnnforge build)")
        add("Fmax", f"{NOT_RUN} (bnnforge build)")

    out = ["<table>"]
    for label, text, cls in rows:
        attr = f' class="{cls}"' if cls else ""
        if text.startswith(NOT_RUN):
            attr = ' class="missing"'
        out.append(f"<tr><th>{_esc(label)}</th><td{attr}>{_esc(text)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _layers(report: dict) -> str:
    c, s = _dict(report.get("compile")), _dict(report.get("sim"))
    compiled = [row for row in _list(c.get("layers")) if isinstance(row, dict)]
    simulated = {row.get("name"): row for row in _list(s.get("layers")) if isinstance(row, dict)}
    rows = compiled or list(simulated.values())
    if not rows:
        return _missing(NOT_RUN)
    bottleneck = s.get("bottleneck") if s else c.get("bottleneck")
    table = []
    for row in rows:
        name = row.get("name")
        sim_row = _dict(simulated.get(name))
        cycles = row.get("cycles_per_frame", sim_row.get("cycles_per_frame"))
        busy = sim_row.get("busy")
        is_bottleneck = name is not None and name == bottleneck
        table.append(([f"{name} (bottleneck)" if is_bottleneck else str(name or "-"),
                       row.get("op") or "-", _shape(row.get("in_shape")),
                       _shape(row.get("out_shape")), _num(row.get("pe")),
                       _num(row.get("simd")), _yes_no(row.get("mst")), _num(cycles),
                       _pct(busy, 1)], "bottleneck" if is_bottleneck else ""))
    note = "" if s else '\n<p class="note">busy %: not run (bnnforge sim)</p>'
    return _table(["stage", "op", "in", "out", "PE", "SIMD", "MST", "cycles/frame", "busy"],
                  table, numeric={4, 5, 7, 8}) + note


def _resources(report: dict) -> str:
    b, c = _dict(report.get("build")), _dict(report.get("compile"))
    if b and not b.get("error"):
        rows = []
        for label, used, total in (("LUTs", "luts_used", "luts_total"),
                                   ("LUT4s", "lut4_used", None),
                                   ("FFs", "ffs_used", None),
                                   ("BRAM", "bram_used", "bram_total")):
            u, t = b.get(used), b.get(total) if total else None
            if u is None and t is None:
                continue
            share = _pct(u / t, 1) if _is_num(u) and _is_num(t) and t else "-"
            rows.append(([label, _num(u), _num(t), share], ""))
        head = (f'<p>{_esc(b.get("board") or "-")} {_esc(b.get("device") or "")}: '
                f'after place and route (nextpnr).</p>')
        if _is_num(b.get("luts_estimate")):
            head += f'\n<p class="note">compile-time estimate: ' \
                    f'{_esc(_num(b.get("luts_estimate")))} logic cells</p>'
        return head + "\n" + _table(["resource", "used", "total", "share"], rows,
                                    numeric={1, 2, 3})
    est = _dict(c.get("resources_estimate"))
    if est:
        rows = [(["LUTs", _num(est.get("luts"))], ""), (["BRAM", _num(est.get("brams"))], "")]
        return ('<p>Estimate from the compiler (no bitstream built yet).</p>\n'
                + _table(["resource", "estimate"], rows, numeric={1}))
    if b:
        return _missing("the build failed; see the error above")
    return _missing(f"{NOT_RUN} (bnnforge build)")


def _energy(report: dict) -> str:
    s = _dict(report.get("sim"))
    breakdown = {str(k): v for k, v in _dict(s.get("energy_breakdown")).items() if _is_num(v)}
    if not breakdown:
        return _missing(f"{NOT_RUN} (bnnforge sim)" if not s else "-")
    total = sum(breakdown.values())
    basis = _dict(s.get("energy_basis"))
    rows = [([k, _num(v, 2), _pct(v / total, 1) if total else "-", basis.get(k, "-")], "")
            for k, v in sorted(breakdown.items(), key=lambda kv: (-kv[1], kv[0]))]
    rows.append((["total", _num(total, 2), "100.0%" if total else "-", ""], "total"))
    return ('<p class="note">Op-count model: operation counts, clock tree, PLL and static '
            'power with the family\'s energy coefficients; each term measured-derived or an '
            'estimate.</p>\n'
            + _table(["component", "nJ/frame", "share", "basis"], rows, numeric={1, 2}))


def _energy_models(report: dict) -> str:
    e = _dict(report.get("energy"))
    layers = [r for r in _list(e.get("layers")) if isinstance(r, dict)]
    if not layers:
        return _missing(f"{NOT_RUN} (bnnforge energy)")
    rows = [([r.get("name"), _num(r.get("op_nj"), 2), _num(r.get("activity_nj"), 2),
              _num(r.get("ratio"), 2), _num(r.get("net_toggles"), 0),
              _num(r.get("ff_toggles"), 0)], "" if r.get("gated", True) else "small")
            for r in layers]
    fixed = _dict(e.get("fixed"))
    rows.append((["fixed (clock tree, PLL, static)", _num(fixed.get("op_nj"), 2),
                  _num(fixed.get("activity_nj"), 2), "", "", ""], ""))
    rows.append((["total", _num(e.get("op_nj_per_frame"), 2),
                  _num(e.get("activity_nj_per_frame"), 2), "", "", ""], "total"))
    basis = _dict(e.get("basis"))
    terms = [([k, _num(v, 2), basis.get(k, "-")], "")
             for k, v in _dict(e.get("activity_breakdown")).items() if _is_num(v)]
    glitch = _list(e.get("glitch_range"))
    note = (f"{_num(e.get('frames'))} frames ({e.get('source', '-')}) through the RTL on "
            f"Verilator with toggle counting, {e.get('family', '-')} at "
            f"{_num(e.get('clock_mhz'))} MHz{' with the PLL' if e.get('pll') else ''}; "
            f"glitch factor {_num(e.get('glitch_factor'))}"
            + (f" (range {_num(glitch[0])}-{_num(glitch[1])})" if len(glitch) == 2 else "")
            + f"; worst layer ratio {_num(e.get('worst_ratio'), 2)} (within 2x: "
            f"{_yes_no(e.get('within_2x'))}). Both models estimate the FPGA core rail only.")
    return (f'<p class="note">{_esc(note)}</p>\n'
            + _table(["stage", "op model nJ", "activity nJ", "op/activity", "net toggles",
                      "FF toggles"], rows, numeric={1, 2, 3, 4, 5})
            + "\n" + _table(["activity term", "nJ/frame", "basis"], terms, numeric={1}))


def _fifos(report: dict) -> str:
    s, c = _dict(report.get("sim")), _dict(report.get("compile"))
    depths = _dict(s.get("fifo_depths")) or _dict(c.get("fifo_depths"))
    if not depths:
        return _missing(NOT_RUN)
    order = [row.get("name") for row in _list(c.get("layers")) if isinstance(row, dict)]
    names = [n for n in order if n in depths]
    names += sorted(str(n) for n in depths if n not in names)
    rows = [([n, _num(depths[n])], "") for n in names]
    return ('<p class="note">Depth of the FIFO in front of each stage.</p>\n'
            + _table(["stage", "depth"], rows, numeric={1}))


def _mst(report: dict) -> str:
    mst = _dict(_dict(report.get("compile")).get("mst"))
    if not mst:
        return _missing(NOT_RUN)
    ratio = mst.get("ratio")
    overall = _table(["statistic", "value"], [
        (["XNORs per vector, dense", _num(mst.get("xnor_dense"))], ""),
        (["XNORs per vector, MST", _num(mst.get("xnor_mst"))], ""),
        (["ratio dense / MST", f"{_num(ratio, 2)}x" if _is_num(ratio) else "-"], ""),
        (["max tree depth", _num(mst.get("max_depth"))], "")], numeric={1})
    rows = []
    for layer in _list(mst.get("layers")):
        if not isinstance(layer, dict):
            continue
        k, ch = layer.get("k"), layer.get("channels")
        roots, weight = layer.get("roots"), layer.get("mst_weight")
        dense = layer.get("xnor_dense")
        if dense is None and _is_num(k) and _is_num(ch):
            dense = k * ch
        cost = layer.get("xnor_mst")
        if cost is None and _is_num(k) and _is_num(roots) and _is_num(weight):
            cost = k * roots + weight          # compiler.mst: K per root plus the tree weight
        ratio = dense / cost if _is_num(dense) and _is_num(cost) and cost else None
        rows.append(([layer.get("name") or "-", _num(k), _num(ch), _num(layer.get("depth")),
                      _num(roots), _num(dense), _num(cost),
                      f"{_num(ratio, 2)}x" if ratio is not None else "-"], ""))
    per_layer = _table(["layer", "K", "channels", "depth", "roots", "xnor_dense", "xnor_mst",
                        "ratio"], rows, numeric={1, 2, 3, 4, 5, 6, 7}) if rows else ""
    return overall + ("\n" + per_layer if per_layer else "")


def _plots(files: set[str] | None) -> str:
    shown = [(name, caption) for name, caption in _PLOTS if files and name in files]
    if not shown:
        return _missing(f"{NOT_RUN} (bnnforge sim draws them)")
    return "\n".join(f'<figure><img src="{_esc(name)}" alt="{_esc(caption)}">'
                     f"<figcaption>{_esc(caption)}</figcaption></figure>"
                     for name, caption in shown)


# -- public API -------------------------------------------------------------------------------
def render_report_html(report: dict, files: set[str] | None = None) -> str:
    """Render a build folder's report as a static HTML5 page.

    Parameters
    ----------
    report
        The contents of ``report.json`` (any subset of the sections ``model``, ``compile``,
        ``sim``, ``verify``, ``build``).
    files
        Names of the files in the build folder; the plots ``sim_cycles.png`` and
        ``sim_energy.png`` are shown (by relative ``src``) only when listed. ``None``: no plots.

    Returns
    -------
    str
        The page: inline CSS only, every report value escaped, the same for the same input.
    """
    report = _dict(report)
    model = _dict(report.get("model"))
    name = model.get("name") or "unnamed model"
    error = _dict(report.get("build")).get("error")
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>bnnforge report: {_esc(name)}</title>", f"<style>{_CSS}</style>",
             "</head>", "<body>", f"<h1>bnnforge report: {_esc(name)}</h1>"]
    if error:
        parts.append(f'<div class="error"><strong>Build failed</strong><pre>{_esc(error)}'
                     "</pre></div>")
    for title, body in (("Summary", _summary(report)), ("Layers", _layers(report)),
                        ("Resources", _resources(report)),
                        ("Energy breakdown", _energy(report)),
                        ("Energy: op model vs RTL activity", _energy_models(report)),
                        ("FIFO depths", _fifos(report)), ("MST statistics", _mst(report)),
                        ("Plots", _plots(files))):
        parts += [f"<h2>{_esc(title)}</h2>", body]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report_html(folder: str | os.PathLike) -> Path:
    """Render ``folder``'s report.json into ``folder/report.html`` (atomic write); return it."""
    folder = Path(folder)
    files = {p.name for p in folder.iterdir() if p.is_file()}
    path = folder / "report.html"
    atomic_write_bytes(path, render_report_html(read_report(folder), files).encode("utf-8"))
    return path
