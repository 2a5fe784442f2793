"""Tests for the sweep's Pareto fronts, pictures and page, the page in a real Chromium."""

from __future__ import annotations

import math
import re

import matplotlib.image
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pagecheck import check_page, column, screenshot_stats

from bnnforge.sweep_report import (
    COLUMNS,
    FRONTS,
    front_points,
    pareto_front,
    plot_fronts,
    write_index,
    write_sweep_report,
)

EVIL = "<script>alert(1)</script>"
PNGS = ["pareto_accuracy_luts.png", "pareto_fps_luts.png", "pareto_energy_fps.png"]


def make_rows(seed: int = 0) -> list[dict]:
    """24 synthetic sweep rows over arch x quantizer x board x fps target; two failed."""
    rng = np.random.default_rng(seed)
    rows = []
    for arch in ("tfc", "sfc", "lfc"):
        for quantizer in ("ste", "reste"):
            for board in ("icebreaker", "ulx3s-85f"):
                for fps_target in (10_000, 100_000):
                    point = f"{len(rows) + 1:012x}"
                    row = dict.fromkeys(COLUMNS)
                    row.update(
                        point=point, arch=arch, dataset="mnist5k", quantizer=quantizer,
                        epochs=5, input_bits=1, shift=1, mst_reg=0.0, mst=False, board=board,
                        fps_target=fps_target, clock_mhz=30.0, seed=0, status="ok",
                        accuracy=float(rng.uniform(0.8, 0.95)),
                        fps=float(fps_target * rng.uniform(1, 3)),
                        latency_us=float(rng.uniform(5, 100)),
                        luts=int(rng.integers(800, 20_000)), ffs=int(rng.integers(500, 9_000)),
                        brams=int(rng.integers(0, 30)),
                        resources="placed" if board == "icebreaker" else "estimate",
                        fmax_mhz=float(rng.uniform(30, 80)),
                        energy_nj=float(rng.uniform(5, 300)), mst_reduction=1.0,
                        wall_s=float(rng.uniform(10, 200)),
                        report=f"points/{point}/build/report.html")
                    rows.append(row)
    for k, error in ((3, f"{EVIL} place and route failed"), (10, "training diverged")):
        rows[k].update(status="error", error=error, accuracy=None, fps=None, luts=None,
                       ffs=None, energy_nj=None, latency_us=None, report=None)
    rows[5]["energy_nj"] = None  # measured in part: left out of the energy plot only
    return rows


def brute_front(xs, ys, x_goal, y_goal) -> list[int]:
    """The O(n^2) definition: no other point at least as good in both, better in one."""
    def ok(v):
        return v is not None and math.isfinite(v)

    def no_worse(a, b, goal):
        return a <= b if goal == "min" else a >= b

    valid = [i for i in range(len(xs)) if ok(xs[i]) and ok(ys[i])]
    front = [i for i in valid
             if not any(no_worse(xs[j], xs[i], x_goal) and no_worse(ys[j], ys[i], y_goal)
                        and (xs[j] != xs[i] or ys[j] != ys[i]) for j in valid)]
    return sorted(front, key=lambda i: (xs[i], i))


values = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.integers(-4, 4),
                   st.floats(-10, 10, allow_nan=False))
goals = st.sampled_from(["min", "max"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(values, values), max_size=40), goals, goals)
def test_pareto_front_matches_brute_force(points, x_goal, y_goal):
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    assert pareto_front(xs, ys, x_goal, y_goal) == brute_front(xs, ys, x_goal, y_goal)


def test_pareto_front_random_floats_all_goals():
    rng = np.random.default_rng(1)
    xs, ys = rng.random(300).tolist(), rng.random(300).tolist()
    for x_goal in ("min", "max"):
        for y_goal in ("min", "max"):
            front = pareto_front(xs, ys, x_goal, y_goal)
            assert front == brute_front(xs, ys, x_goal, y_goal)
            assert 1 <= len(front) < 300


def test_pareto_front_goals_ties_and_missing():
    xs = [1, 2, 2, 3, None, 0, 3, math.nan]
    ys = [1, 5, 4, 5, 9, math.nan, 5, 9]
    assert pareto_front(xs, ys) == [0, 1]  # fewer x, more y; (2, 4) loses to (2, 5)
    assert pareto_front(xs, ys, "max", "max") == [3, 6]  # identical points both kept
    assert pareto_front(xs, ys, "min", "min") == [0]
    assert pareto_front(xs, ys, "max", "min") == [0, 2, 3, 6]
    assert pareto_front([], []) == []
    assert pareto_front([None], [1.0]) == []


def test_pareto_front_rejects_bad_arguments():
    with pytest.raises(ValueError, match="x_goal must be 'min' or 'max', not 'least'"):
        pareto_front([1], [1], x_goal="least")
    with pytest.raises(ValueError, match="differ in length: 2 != 1"):
        pareto_front([1, 2], [1])


def test_columns_are_the_row_schema():
    assert len(COLUMNS) == len(set(COLUMNS)) == 37
    assert COLUMNS[0] == "point" and COLUMNS[-1] == "report"
    assert set(make_rows()[0]) == set(COLUMNS)


def test_plot_fronts_writes_three_identical_pngs(tmp_path):
    rows = make_rows()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert plot_fronts(tmp_path / "a", rows) == PNGS
    assert plot_fronts(tmp_path / "b", list(rows)) == PNGS
    for name in PNGS:
        data = (tmp_path / "a" / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert data == (tmp_path / "b" / name).read_bytes(), name
        image = matplotlib.image.imread(tmp_path / "a" / name)
        assert image.shape[1] >= 600 and image.shape[0] >= 400
        assert (image[..., :3] < 0.5).any()  # something dark is drawn
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(PNGS)


def test_plot_fronts_without_usable_points(tmp_path):
    rows = make_rows()
    for row in rows:
        row.update(status="error", error="x")
    assert plot_fronts(tmp_path, rows) == PNGS
    assert plot_fronts(tmp_path, []) == PNGS
    for name in PNGS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_write_index_escapes_links_and_marks(tmp_path):
    rows = make_rows()
    rows[0]["arch"] = '"><img src=x onerror=alert(2)>'
    rows[1]["report"] = 'javascript:alert(3)" onclick="alert(4)'
    path = write_sweep_report(tmp_path, rows, title=f"sweep {EVIL}",
                              summary={"axes": {"arch": ["tfc", "sfc", "lfc"]}, "spec": EVIL})
    assert path == tmp_path / "index.html"
    page = path.read_text(encoding="utf-8")
    assert EVIL not in page and "<img src=x" not in page and 'onclick="' not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    # title, h1, spec, the error cell and its hover title, the failures list
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 6
    # the error cell, its hover title and the failures list
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt; place and route failed") == 3
    assert page.count("<script>") == 1  # the page's own sorting script
    assert 'href="javascript:' not in page
    assert 'href="javascript%3Aalert%283%29%22%20onclick%3D%22alert%284%29"' in page
    rows_html = re.findall(r"<tr( class=\"[^\"]*\")?>(.*?)</tr>", page.split("<tbody>")[-1])
    assert len(rows_html) == len(rows)
    for row, (cls, cells) in zip(rows, rows_html, strict=True):
        if row["report"] is not None and row is not rows[1]:
            assert f'<a href="{row["report"]}">{row["point"]}</a>' in cells
        if row["status"] == "error":
            assert "failed" in cls and "<a " not in cells
            assert '<td class="status">error</td>' in cells
        if row["resources"] == "estimate" and row["luts"] is not None:
            assert "est.</span>" in cells
    fronts = front_points(rows)
    on_front = set().union(*fronts.values())
    assert on_front
    for i, (cls, cells) in enumerate(rows_html):
        assert ("front" in cls) == (i in on_front)
        tags = "".join(spec["tag"] for spec in FRONTS if i in fronts[spec["file"]])
        assert (f'<td class="front">{tags}</td>' if tags else
                '<td class="front" data-v=""></td>') in cells
    for name in PNGS:
        assert f'<img src="{name}"' in page
    assert "24 points: <b>22 ok</b>, <b>2 failed</b>" in page
    again = tmp_path / "again"
    again.mkdir()
    assert write_sweep_report(again, rows, title=f"sweep {EVIL}",
                              summary={"axes": {"arch": ["tfc", "sfc", "lfc"]},
                                       "spec": EVIL}).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        PNGS + ["index.html"])  # no temporary files left


def test_write_index_derives_axes_without_summary(tmp_path):
    page = write_index(tmp_path, make_rows()).read_text(encoding="utf-8")
    assert "<th>arch</th><td>tfc, sfc, lfc</td>" not in page  # sorted, not given order
    assert "<th>arch</th><td>lfc, sfc, tfc</td>" in page
    assert "<th>board</th><td>icebreaker, ulx3s-85f</td>" in page
    assert "<th>fps_target</th><td>10000, 100000</td>" in page
    assert "<th>dataset</th>" not in page  # not swept


def accuracy_values(rows: list[list[str]], index: int) -> list[float | None]:
    return [None if v == "—" else float(v) for v in column(rows, index)]


@pytest.mark.browser
def test_page_in_chromium(tmp_path):
    rows = make_rows()
    index = write_sweep_report(tmp_path, rows, summary={"spec": "sweep.toml"})
    header = '#points th:has-text("accuracy %")'
    got = check_page(index, tmp_path / "shot.png", click=[header, header], table="#points")
    assert got["console_errors"] == []
    assert got["page_errors"] == []
    assert got["failed_requests"] == []
    assert got["dialogs"] == []
    assert [img["src"] for img in got["images"]] == PNGS
    assert all(img["ok"] for img in got["images"]), got["images"]
    assert got["title"] == "bnnforge sweep"
    assert f"{EVIL} place and route failed" in got["text"]  # shown as text, not run
    stats = screenshot_stats(tmp_path / "shot.png")
    assert stats["width"] >= 1280 and stats["height"] >= 900
    assert stats["nonwhite"] > 0.02 and stats["colours"] > 50

    col = got["headers"].index("accuracy %")
    points = sorted(r["point"] for r in rows)
    measured = sorted(r["accuracy"] for r in rows if r["accuracy"] is not None)
    ascending, descending = (accuracy_values(c["rows"], col) for c in got["clicks"])
    n = len(measured)
    assert ascending[:n] == pytest.approx([round(100 * a, 2) for a in measured])
    assert descending[:n] == ascending[:n][::-1]
    assert ascending[n:] == descending[n:] == [None, None]  # unmeasured last both ways
    for click in got["clicks"]:
        assert sorted(column(click["rows"], 0)) == points
    assert got["table"] == got["clicks"][-1]["rows"]
