"""Pictures and a browsable page for a design-space sweep (``bnnforge sweep``).

The sweep engine gives one row per point: a dict with the keys of :data:`COLUMNS` (values may be
``None`` when not measured or when the point failed). :func:`write_sweep_report` draws three
Pareto fronts as PNG and writes ``index.html`` beside them: a summary, the fronts and a sortable
table of every point linking that point's own build report. Output is deterministic: the same
rows give byte-identical files.
"""

from __future__ import annotations

import html
import io
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .compiler.serialize import atomic_write_bytes

__all__ = ["COLUMNS", "FRONTS", "pareto_front", "front_points", "plot_fronts", "write_index",
           "write_sweep_report"]

#: The columns of a sweep row, in order; the one definition, shared with the sweep engine.
COLUMNS: tuple[str, ...] = (
    "point", "model", "arch", "dataset", "quantizer", "epochs", "input_bits", "shift", "mst_reg",
    "mst_depth", "mst", "board", "fps_target", "clock_mhz", "seed", "status", "error",
    "accuracy", "accuracy_torch", "disagreements", "cycles_per_frame", "fps", "latency_us",
    "luts", "ffs", "brams", "resources", "fmax_mhz", "energy_nj", "mst_reduction",
    "mst_max_depth", "value_mismatches", "cycle_mismatches", "train_s", "wall_s", "attempts",
    "report",
)

#: The three fronts: file name, short tag, (x column, goal), (y column, goal), labels, caption.
FRONTS: tuple[dict[str, Any], ...] = (
    {"file": "pareto_accuracy_luts.png", "tag": "A", "x": "luts", "x_goal": "min",
     "y": "accuracy", "y_goal": "max", "x_label": "LUTs", "y_label": "accuracy (%)",
     "title": "accuracy vs LUTs", "log": False,
     "caption": "Accuracy in hardware arithmetic against LUTs. The ringed points joined by the "
                "step line are the Pareto front: no other point is both smaller and more "
                "accurate."},
    {"file": "pareto_fps_luts.png", "tag": "F", "x": "luts", "x_goal": "min",
     "y": "fps", "y_goal": "max", "x_label": "LUTs", "y_label": "throughput (frames/s)",
     "title": "throughput vs LUTs", "log": True,
     "caption": "Frames per second against LUTs. The front holds the points that no smaller "
                "design beats in throughput."},
    {"file": "pareto_energy_fps.png", "tag": "E", "x": "fps", "x_goal": "max",
     "y": "energy_nj", "y_goal": "min", "x_label": "throughput (frames/s)",
     "y_label": "energy per frame (nJ)", "title": "energy per frame vs throughput", "log": True,
     "caption": "Energy per frame against frames per second. The front holds the points that "
                "no faster design beats in energy per frame."},
)

# Sweep axes in the order they are tried for colouring the points; the first that varies wins.
_COLOUR_AXES = ("arch", "quantizer", "mst_reg", "mst_depth", "board", "fps_target", "input_bits",
                "epochs", "shift", "dataset", "clock_mhz", "seed")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
_LOG_SPAN = 10.0  # an axis whose values span more than this factor is drawn logarithmic


def _num(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None for None, NaN, infinities and non-numbers."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def pareto_front(xs: Sequence[Any], ys: Sequence[Any], x_goal: str = "min",
                 y_goal: str = "max") -> list[int]:
    """Return the indices of the non-dominated points, sorted by x.

    Point ``i`` is dominated when another point is at least as good in both coordinates and
    strictly better in one ("good" meaning smaller for a ``"min"`` goal, larger for ``"max"``).
    Identical points do not dominate each other, so all copies of a front point are kept.

    Parameters
    ----------
    xs, ys : sequence of float or None
        Coordinates of equal length. Points with a None, NaN or infinite coordinate are ignored.
    x_goal, y_goal : {"min", "max"}
        Whether smaller or larger is better on that axis.

    Returns
    -------
    list of int
        Indices into ``xs``/``ys``, ordered by ascending x, then by index.

    Raises
    ------
    ValueError
        If a goal is not "min" or "max", or the sequences differ in length.
    """
    for name, goal in (("x_goal", x_goal), ("y_goal", y_goal)):
        if goal not in ("min", "max"):
            raise ValueError(f"{name} must be 'min' or 'max', not {goal!r}")
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length: {len(xs)} != {len(ys)}")
    sx = 1.0 if x_goal == "min" else -1.0
    sy = 1.0 if y_goal == "min" else -1.0
    points = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        fx, fy = _num(x), _num(y)
        if fx is not None and fy is not None:
            points.append((sx * fx, sy * fy, i))
    # In minimisation form, sweep by ascending x then y: a point is on the front when its y beats
    # every point with a strictly smaller x, and it is the best y (or a copy of it) at its own x.
    points.sort()
    front = []
    best = math.inf  # best y among points with a strictly smaller x
    k = 0
    while k < len(points):
        j = k
        while j < len(points) and points[j][0] == points[k][0]:
            j += 1
        group_best = points[k][1]
        if group_best < best:
            front.extend(p[2] for p in points[k:j] if p[1] == group_best)
            best = group_best
        k = j
    return sorted(front, key=lambda i: (_num(xs[i]), i))


def front_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Return, for each front of :data:`FRONTS` (by file name), the indices of its rows.

    Only rows with ``status == "ok"`` and both coordinates measured take part.
    """
    fronts = {}
    for spec in FRONTS:
        idx = [i for i, r in enumerate(rows) if r.get("status") == "ok"]
        xs = [rows[i].get(spec["x"]) for i in idx]
        ys = [rows[i].get(spec["y"]) for i in idx]
        fronts[spec["file"]] = [idx[k] for k in pareto_front(xs, ys, spec["x_goal"],
                                                              spec["y_goal"])]
    return fronts


def _sort_key(value: Any) -> tuple:
    x = _num(value)
    if x is not None:
        return (0, x, "")
    return (1 if value is not None else 2, 0.0, str(value))


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _distinct(rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    seen: dict[str, Any] = {}
    for r in rows:
        v = r.get(key)
        seen.setdefault(repr(v), v)
    return sorted(seen.values(), key=_sort_key)


def _use_log(values: Sequence[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) > _LOG_SPAN


def _si(value: float, _pos: Any = None) -> str:
    """Format a tick as 500, 2k, 1.5M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def _format_axis(ax: Any, which: str, key: str, log: bool) -> None:
    """Scale and label one axis: logarithmic with 1-2-5 ticks as 20k, 50k; else 12,500 (and
    200k, 1.4M from 100,000 up)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    if log:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
        axis.set_major_formatter(FuncFormatter(_si))
    elif key != "accuracy":
        axis.set_major_formatter(FuncFormatter(
            lambda v, _pos: _si(v) if abs(v) >= 1e5 else f"{v:,.6g}"))


def _plot_front(path: Path, rows: Sequence[Mapping[str, Any]], spec: Mapping[str, Any],
                colour_axis: str | None, colours: dict[str, Any], boards: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    scale = 100.0 if spec["y"] == "accuracy" else 1.0
    pts = []
    for r in rows:
        x, y = _num(r.get(spec["x"])), _num(r.get(spec["y"]))
        if r.get("status") == "ok" and x is not None and y is not None:
            pts.append((x, y, r))
    xs = [p[0] for p in pts]
    front = pareto_front(xs, [p[1] for p in pts], spec["x_goal"], spec["y_goal"])
    ys = [p[1] * scale for p in pts]  # accuracy drawn in %
    markers = {repr(b): _MARKERS[k % len(_MARKERS)] for k, b in enumerate(boards)}
    by_board = len(boards) > 1

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    groups: dict[tuple[str, str], list[int]] = {}
    for k, (_, _, r) in enumerate(pts):
        c = repr(r.get(colour_axis)) if colour_axis else ""
        m = repr(r.get("board")) if by_board else ""
        groups.setdefault((c, m), []).append(k)
    for (c, m), ks in sorted(groups.items()):
        ax.scatter([xs[k] for k in ks], [ys[k] for k in ks], s=36, alpha=0.85,
                   color=colours.get(c, "tab:blue"), marker=markers.get(m, "o"),
                   edgecolors="white", linewidths=0.5, zorder=3)
    handles = []
    if front:
        fx = [xs[k] for k in front]
        fy = [ys[k] for k in front]
        ax.step(fx, fy, where="post" if spec["x_goal"] == "min" else "pre", color="black",
                linewidth=1.2, zorder=2)
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="black", linewidths=1.2,
                   zorder=4)
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none",
                              markersize=9, label=f"Pareto front ({len(front)})"))
    if colour_axis and pts:
        for v in _distinct([p[2] for p in pts], colour_axis):
            handles.append(Line2D([], [], linestyle="", marker="o", markersize=7,
                                  color=colours[repr(v)], label=f"{colour_axis}={_fmt_value(v)}"))
    if by_board and pts:
        for b in _distinct([p[2] for p in pts], "board"):
            handles.append(Line2D([], [], linestyle="", marker=markers[repr(b)], markersize=7,
                                  color="dimgray", label=f"board={_fmt_value(b)}"))
    if not pts:
        ax.text(0.5, 0.5, f"no points with {spec['x']} and {spec['y']} measured",
                transform=ax.transAxes, ha="center", va="center", color="dimgray")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        _format_axis(ax, "x", spec["x"], spec["log"] and _use_log(xs))
        _format_axis(ax, "y", spec["y"], spec["log"] and _use_log(ys))
        ax.grid(True, which="major", color="0.9", linewidth=0.8, zorder=0)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, fontsize=8, frameon=False)
    ax.set_xlabel(spec["x_label"])
    ax.set_ylabel(spec["y_label"])
    ax.set_title(f"{spec['title']} ({len(pts)} points, {len(front)} on the front)", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _colour_axis(rows: Sequence[Mapping[str, Any]]) -> str | None:
    for axis in _COLOUR_AXES:
        if len(_distinct(rows, axis)) > 1:
            return axis
    return None


def plot_fronts(folder: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Draw the three Pareto fronts of :data:`FRONTS` as PNG files in ``folder``.

    Each is a scatter of the rows with ``status == "ok"`` and both coordinates measured, coloured
    by the first sweep axis that varies among them (arch, else quantizer, else mst_reg, ...),
    with one marker per board when there are several, and the front drawn as a step line over
    ringed points. A plot with no usable point still renders, with a note saying so.

    Parameters
    ----------
    folder : path
        Existing folder to write into.
    rows : sequence of mapping
        Sweep rows with the keys of :data:`COLUMNS`.

    Returns
    -------
    list of str
        The file names written, in the order of :data:`FRONTS`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    ok = [r for r in rows if r.get("status") == "ok"]
    axis = _colour_axis(ok)
    cycle = plt.get_cmap("tab10" if axis is None or len(_distinct(ok, axis)) <= 10 else "tab20")
    colours = {}
    if axis is not None:
        for k, v in enumerate(_distinct(ok, axis)):
            colours[repr(v)] = cycle(k % cycle.N)
    boards = _distinct(ok, "board")
    names = []
    for spec in FRONTS:
        _plot_front(folder / spec["file"], rows, spec, axis, colours, boards)
        names.append(spec["file"])
    return names


# ---------------------------------------------------------------------------------------------
# index.html


def _f(fmt: str) -> Any:
    return lambda v: format(v, fmt)


# (key, header, sort type, formatter of a present value, tooltip)
_TABLE: tuple[tuple[str, str, str, Any, str], ...] = (
    ("point", "point", "str", str, "point id; links the point's build report"),
    ("front", "\u2605", "str", str, "on the Pareto front: A accuracy/LUTs, F frames/s/LUTs, "
                                   "E energy/frames/s"),
    ("arch", "arch", "str", str, "architecture, or the model file a point compiled"),
    ("quantizer", "quantizer", "str", str, "binarizer"),
    ("mst_reg", "MST reg", "num", _f("g"), "MST regularizer strength"),
    ("board", "board", "str", str, "target board"),
    ("fps_target", "target fps", "num", _f(",.0f"), "target frames per second"),
    ("status", "status", "str", str, "ok or error"),
    ("accuracy", "accuracy %", "num", lambda v: f"{100 * v:.2f}",
     "accuracy in hardware arithmetic"),
    ("fps", "frames/s", "num", _f(",.0f"), "frames per second"),
    ("latency_us", "latency µs", "num", _f(",.2f"), "latency of one frame"),
    ("luts", "LUTs", "num", _f(",.0f"), "LUTs, placed or estimated (est.)"),
    ("ffs", "FFs", "num", _f(",.0f"), "flip-flops"),
    ("brams", "BRAM", "num", _f("g"), "block RAMs"),
    ("fmax_mhz", "Fmax MHz", "num", _f(".1f"), "maximum clock after place and route"),
    ("energy_nj", "energy nJ", "num", _f(",.2f"), "energy per frame"),
    ("mst_reduction", "MST ×", "num", lambda v: f"{v:.2f}×", "MST reduction factor"),
    ("wall_s", "wall s", "num", _f(",.1f"), "wall-clock seconds for the point"),
    ("error", "error", "str", str, "error message of a failed point"),
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
  margin: 1.25rem 1.5rem; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 .4rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; }
.summary { margin: 0 0 .3rem; }
.axes { border-collapse: collapse; margin: .3rem 0 1rem; }
.axes th, .axes td { text-align: left; padding: .1rem 1rem .1rem 0; vertical-align: top; }
.axes th { font-weight: 600; color: #555; }
.fronts { display: flex; flex-wrap: wrap; gap: 1rem; }
.fronts figure { margin: 0; flex: 1 1 540px; max-width: 642px; }
.fronts img { width: 100%; height: auto; border: 1px solid #ddd; border-radius: 4px; }
.fronts figcaption { font-size: .85rem; color: #444; margin-top: .3rem; }
.note { color: #555; font-size: .85rem; }
table.points { border-collapse: collapse; font-size: 12.5px; font-variant-numeric: tabular-nums; }
.points th, .points td { padding: .2rem .35rem; border-bottom: 1px solid #e4e4e4;
  white-space: nowrap; }
.points th { position: sticky; top: 0; background: #f3f4f6; cursor: pointer; user-select: none;
  text-align: left; font-weight: 600; white-space: normal; vertical-align: bottom; }
.points th:hover { background: #e5e7eb; }
.points th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
.points th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
.points td.num, .points th[data-type="num"] { text-align: right; }
.points td.na { color: #aaa; }
.points tbody tr:nth-child(even) { background: #fafafa; }
.points tr.front td.point { font-weight: 700; }
.points tr.front td.point::before { content: "\\2605 "; color: #b7791f; }
.points tr.failed, .points tbody tr.failed:nth-child(even) { background: #fdecec; }
.points tr.failed td.status { color: #b91c1c; font-weight: 700; }
.points td.error { white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  max-width: 22rem; color: #b91c1c; }
.failures li { margin: .3em 0; }
.failures .ids { color: #666; font-size: .85em; }
.est { color: #b45309; font-size: .8em; margin-left: .2em; }
"""

_JS = """
(function () {
  "use strict";
  var table = document.getElementById("points");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function key(row, i) {
    var cell = row.cells[i];
    return cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
  }
  function sortBy(i) {
    var th = heads[i];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var num = th.getAttribute("data-type") === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (ra, rb) {
      var a = key(ra, i), b = key(rb, i);
      if (a === "" || b === "") { return (a === "") - (b === ""); }
      var d = num ? Number(a) - Number(b) : collator.compare(a, b);
      return asc ? d : -d;
    });
    for (var k = 0; k < heads.length; k++) { heads[k].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(i); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(i); }
    });
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_size(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _cell(key: str, kind: str, fmt: Any, row: Mapping[str, Any], tags: str) -> str:
    if key == "front":
        return f'<td class="front">{tags}</td>' if tags else '<td class="front" data-v=""></td>'
    value = row.get(key)
    if kind == "num":
        x = _num(value)
        if x is None:
            return '<td class="num na" data-v="">—</td>'
        text = _e(fmt(value))
        if key == "luts" and row.get("resources") == "estimate":
            text += '<span class="est" title="estimate before place and route">est.</span>'
        return f'<td class="num" data-v="{x!r}">{text}</td>'
    if value is None or value == "":
        return f'<td class="{key} na" data-v="">{"" if key == "error" else "—"}</td>'
    text = _e(fmt(value))
    if key == "point" and row.get("report"):
        href = _e(quote(str(row["report"]), safe="/._-~"))
        text = f'<a href="{href}">{text}</a>'
    if key == "error":                      # one line in the table; the whole text on hover
        return f'<td class="error" title="{text}">{text}</td>'
    return f'<td class="{key}">{text}</td>'


def _summary_html(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> str:
    ok = sum(1 for r in rows if r.get("status") == "ok")
    failed = len(rows) - ok
    out = [f'<p class="summary">{len(rows)} points: <b>{ok} ok</b>, '
           f'<b>{failed} failed</b>.</p>']
    summary = dict(summary or {})
    axes = summary.pop("axes", None)
    if axes is None:
        axes = {}
        for key in _COLOUR_AXES + ("mst",):
            values = _distinct(rows, key)
            if len(values) > 1:
                axes[key] = values
    items = []
    for name, values in dict(axes).items():
        if isinstance(values, (list, tuple)):
            values = ", ".join(_fmt_value(v) for v in values)
        items.append(f"<tr><th>{_e(name)}</th><td>{_e(values)}</td></tr>")
    for name, value in summary.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ", ".join(_fmt_value(v) for v in value)
        items.append(f"<tr><th>{_e(name)}</th><td>{_e(_fmt_value(value))}</td></tr>")
    if items:
        out.append('<table class="axes"><tbody>' + "".join(items) + "</tbody></table>")
    return "\n".join(out)


def write_index(folder: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                title: str = "bnnforge sweep", summary: Mapping[str, Any] | None = None) -> Path:
    """Write the sweep's ``index.html`` into ``folder``, atomically.

    The page holds a summary (points ok and failed; the swept axes and their values), the three
    front images of :func:`plot_fronts` with captions, and a table of all rows, sortable by
    clicking a header. Each point id links its build report (``row["report"]``, relative to
    ``folder``); front points are starred and tagged (A, F, E for the three fronts); failed
    rows are shaded and show their error. No external resources, no timestamps.

    Parameters
    ----------
    folder : path
        Existing folder; the front PNGs are referenced by relative name.
    rows : sequence of mapping
        Sweep rows with the keys of :data:`COLUMNS`, shown in the order given.
    title : str
        Page title and heading.
    summary : mapping, optional
        Shown under the heading. Key ``"axes"`` maps each swept axis to its list of values
        (derived from the rows when absent); every other key is shown as ``key: value`` (a
        mapping as ``k=v, ...``; None values are left out).

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.
    """
    folder = Path(folder)
    fronts = front_points(rows)
    tags: dict[int, str] = {}
    for spec in FRONTS:
        for i in fronts[spec["file"]]:
            tags[i] = tags.get(i, "") + spec["tag"]
    n_est = sum(1 for r in rows
                if r.get("status") == "ok" and r.get("resources") == "estimate"
                and _num(r.get("luts")) is not None)
    n_luts = sum(1 for r in rows if r.get("status") == "ok" and _num(r.get("luts")) is not None)

    figures = []
    for spec in FRONTS:
        size = _png_size(folder / spec["file"])
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        caption = spec["caption"]
        if spec["x"] == "luts" and n_est:
            caption += f" {n_est} of {n_luts} LUT counts are estimates before place and route."
        figures.append(f'<figure><img src="{_e(spec["file"])}" alt="{_e(spec["title"])}"{dims}>'
                       f"<figcaption>{_e(caption)}</figcaption></figure>")

    head = "".join(f'<th data-type="{kind}" title="{_e(tip)}">{_e(label)}</th>'
                   for _, label, kind, _, tip in _TABLE)
    body = []
    for i, row in enumerate(rows):
        classes = []
        if i in tags:
            classes.append("front")
        if row.get("status") != "ok":
            classes.append("failed")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        cells = "".join(_cell(key, kind, fmt, row, tags.get(i, ""))
                        for key, _, kind, fmt, _ in _TABLE)
        body.append(f"<tr{cls}>{cells}</tr>")

    failures: dict[str, list[str]] = {}
    for row in rows:
        if row.get("status") != "ok":
            failures.setdefault(str(row.get("error") or "no message"), []).append(
                str(row.get("point")))
    failed_html = ""
    if failures:
        items = "".join(f'<li><b>{len(ids)} point{"s" if len(ids) > 1 else ""}</b>: {_e(msg)} '
                        f'<span class="ids">({_e(", ".join(ids))})</span></li>'
                        for msg, ids in sorted(failures.items(), key=lambda kv: -len(kv[1])))
        failed_html = f'<h2>Failures</h2>\n<ul class="failures">{items}</ul>'

    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
{_summary_html(rows, summary)}
<h2>Pareto fronts</h2>
<div class="fronts">
{chr(10).join(figures)}
</div>
<h2>Points</h2>
<p class="note">Click a column header to sort (again to reverse). &#9733; marks a point on a
Pareto front (A accuracy/LUTs, F frames/s/LUTs, E energy/frames/s); a point id links its build
report; <span class="est">est.</span> marks a LUT count estimated before place and route;
failed points are shaded red.</p>
<table class="points" id="points">
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
{failed_html}
<script>{_JS}</script>
</body>
</html>
"""
    path = folder / "index.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def write_sweep_report(folder: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                       title: str = "bnnforge sweep",
                       summary: Mapping[str, Any] | None = None) -> Path:
    """Draw the fronts (:func:`plot_fronts`) and write ``index.html`` (:func:`write_index`).

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.
    """
    plot_fronts(folder, rows)
    return write_index(folder, rows, title=title, summary=summary)
