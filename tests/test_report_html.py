"""report.html: written by every step from report.json, escaped, deterministic, partial-safe."""

from __future__ import annotations

import copy
import json

import pytest

from bnnforge.buildfolder import read_report, update_report
from bnnforge.flow import compile_model, train_model
from bnnforge.report_html import render_report_html, write_report_html
from bnnforge.simulate import simulate_build

EVIL = '<script>alert("x")</script> & <img src=x onerror=1>'


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A trained, compiled (no RTL) and simulated tfc; report.html as it was after compile."""
    root = tmp_path_factory.mktemp("report_html")
    model, build = root / "tfc.bnn", root / "build"
    train_model("tfc", "digits", "ste", model, epochs=1, progress=False)
    compile_model(model, build, rtl=False)
    after_compile = (build / "report.html").read_text(encoding="utf-8")
    simulate_build(build, frames=50, progress=False)
    return build, after_compile


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_compile_writes_report_html(built):
    build, text = built
    report = read_report(build)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<h1>bnnforge report: tfc</h1>" in text
    for row in report["compile"]["layers"]:
        assert f"<td>{row['name']}" in text
    assert f"<tr class=\"bottleneck\"><td>{report['compile']['bottleneck']} (bottleneck)" in text
    assert "not run (bnnforge sim)" in text and "not run (bnnforge verify)" in text
    assert "<img" not in text                          # no plots before sim
    assert "<script" not in text and "http" not in text


def test_sim_refreshes_report_html(built):
    build, after_compile = built
    text = (build / "report.html").read_text(encoding="utf-8")
    sim = read_report(build)["sim"]
    assert text != after_compile
    assert f"<td>{sim['fps']:,.0f}</td>" in text
    assert f"{sim['energy_nj_per_frame']:.2f} nJ/frame" in text
    for key in sim["energy_breakdown"]:
        assert f"<td>{key}</td>" in text
    for row in sim["layers"]:
        assert f"{100 * row['busy']:.1f}%" in text
    assert '<img src="sim_cycles.png"' in text and '<img src="sim_energy.png"' in text
    assert "not run (bnnforge sim)" not in text
    # the file is exactly what render_report_html gives for the folder's report and files
    assert text == render_report_html(read_report(build), _files(build))


def test_energy_breakdown_sorted_descending(built):
    build, _ = built
    breakdown = read_report(build)["sim"]["energy_breakdown"]
    text = render_report_html(read_report(build))
    positions = [text.index(f"<td>{key}</td>") for key in
                 sorted(breakdown, key=lambda k: (-breakdown[k], k))]
    assert positions == sorted(positions)


def test_render_escapes_model_name(built):
    build, _ = built
    report = read_report(build)
    report["model"]["name"] = EVIL
    report["sim"]["energy_breakdown"][EVIL] = 1.0
    text = render_report_html(report, _files(build))
    assert "<script>" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; " in text
    assert f"<title>bnnforge report: {EVIL}" not in text


def test_render_is_deterministic(built):
    build, _ = built
    report = read_report(build)
    files = _files(build)
    first = render_report_html(report, files)
    assert render_report_html(copy.deepcopy(report), set(sorted(files, reverse=True))) == first
    shuffled = json.loads(json.dumps(report))
    for section in ("sim", "compile"):
        shuffled[section]["fifo_depths"] = dict(reversed(shuffled[section]["fifo_depths"].items()))
    shuffled["sim"]["energy_breakdown"] = dict(reversed(report["sim"]["energy_breakdown"].items()))
    assert render_report_html(shuffled, files) == first
    write_report_html(build)
    assert (build / "report.html").read_text(encoding="utf-8") == first


@pytest.mark.parametrize("report", [
    {"model": {"name": "only-model"}},
    {},
    {"model": {"name": "old", "dataset": None, "accuracy_torch": None},
     "compile": {"layers": "junk", "mst": {"layers": [None, {"name": "fc0"}]}},
     "sim": {"layers": [1, 2], "energy_breakdown": {"a": "x"}, "fps": None},
     "verify": {}, "build": {"board": "icebreaker"}},
])
def test_partial_report_renders(report):
    text = render_report_html(report)
    assert text.startswith("<!DOCTYPE html>") and "not run" in text
    if "model" in report and report["model"].get("name") == "only-model":
        assert "<h1>bnnforge report: only-model</h1>" in text
        for step in ("sim", "verify", "build"):
            assert f"not run (bnnforge {step})" in text


def test_build_error_and_resource_estimate():
    report = {"model": {"name": "m"},
              "compile": {"resources_estimate": {"luts": 4321, "brams": 7}, "layers": []},
              "build": {"board": "icebreaker", "luts_estimate": 9000,
                        "error": "the design needs about 9,000 LUTs <too many>"}}
    text = render_report_html(report)
    assert '<div class="error"><strong>Build failed</strong>' in text
    assert "about 9,000 LUTs &lt;too many&gt;" in text
    assert text.index('class="error"') < text.index("<h2>Summary</h2>")
    del report["build"]
    text = render_report_html(report)
    assert "Build failed" not in text
    assert "Estimate from the compiler" in text and "4,321" in text and "about 4,321 LUTs" in text


def test_update_report_writes_html(tmp_path):
    update_report(tmp_path, "model", {"name": "fresh"})
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h1>bnnforge report: fresh</h1>" in text and "not run" in text
    update_report(tmp_path, "verify", {"simulator": "icarus", "frames": 3,
                                       "value_mismatches": 0, "cycle_mismatches": 1})
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "3 frames on icarus: 0 value, 1 cycle mismatches" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]
