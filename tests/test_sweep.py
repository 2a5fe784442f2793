"""Design-space sweeps: the spec, resumption, failures, and a real Dask cluster on 127.0.0.1.

The cluster test starts ``dask scheduler`` and two ``dask worker`` processes, runs a sweep
through ``bnnforge sweep --scheduler``, kills the worker that is running a point (SIGKILL, in
the middle of its RTL check) and checks that every point still finishes, then opens both pages
in headless Chromium.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pagecheck import check_page, screenshot_stats

from bnnforge.cli import main
from bnnforge.sweep import (
    SweepError,
    load_spec,
    parse_spec,
    point_id,
    read_results,
    run_sweep,
    train_key,
)
from bnnforge.sweep_report import COLUMNS

BIN = Path(sys.executable).parent

# small and fast: 8x8 digits, one epoch
_BASE = """
[sweep]
dataset = "digits"
epochs = 1
frames = 50
"""


def _spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(_BASE + text)
    return path


# -- the spec ---------------------------------------------------------------------------------
def test_grid_is_the_product_of_the_axes_in_spec_order():
    spec = parse_spec({"axes": {"arch": ["tfc", "sfc"], "quantizer": ["ste", "reste", "biper"]},
                       "sweep": {"epochs": 3}})
    assert spec.grid_size == 6
    assert [(p["arch"], p["quantizer"]) for p in spec.points] == [
        ("tfc", "ste"), ("tfc", "reste"), ("tfc", "biper"),
        ("sfc", "ste"), ("sfc", "reste"), ("sfc", "biper")]
    assert all(p["epochs"] == 3 and p["board"] == "none" for p in spec.points)
    assert len({point_id(p) for p in spec.points}) == 6
    # points that differ only in hardware settings share one trained model
    hw = parse_spec({"axes": {"fps": [0, 1000], "board": ["none", "icebreaker"]}})
    assert len({train_key(p) for p in hw.points}) == 1
    assert len({point_id(p) for p in hw.points}) == 4


def test_random_samples_are_a_seeded_subset_of_the_grid():
    data = {"axes": {"arch": ["tfc", "sfc"], "quantizer": ["ste", "reste", "biper", "approx_sign"],
                     "seed": [0, 1, 2]}, "sweep": {"samples": 5, "sample_seed": 7}}
    a, b = parse_spec(data), parse_spec(data)
    grid = [point_id(p) for p in parse_spec({"axes": data["axes"]}).points]
    ids = [point_id(p) for p in a.points]
    assert ids == [point_id(p) for p in b.points]
    assert len(set(ids)) == 5 and set(ids) <= set(grid)
    assert ids == [i for i in grid if i in ids]            # kept in grid order
    other = parse_spec({**data, "sweep": {"samples": 5, "sample_seed": 8}})
    assert [point_id(p) for p in other.points] != ids


@pytest.mark.parametrize("data, match", [
    ({"axes": {"arhc": ["tfc"]}}, r"unknown setting 'arhc' in \[axes\]; settings are arch"),
    ({"sweep": {"epochs": [1, 2]}}, r"\[sweep\] epochs is a list; move it to \[axes\]"),
    ({"sweep": {"arch": "tfc"}, "axes": {"arch": ["sfc"]}}, "'arch' is in .sweep. and in"),
    ({"axes": {"quantizer": ["ste", "sign"]}}, "quantizer = 'sign' is not one of ste, "),
    ({"axes": {"board": ["icebreaker", "de10"]}}, "board = 'de10' is not one of none, "),
    ({"axes": {"epochs": []}}, r"\[axes\] epochs must be a non-empty list"),
    ({"axes": {"epochs": [0]}}, "epochs = 0: expected a positive whole number"),
    ({"axes": {"fps": [-5]}}, "fps = -5: expected a number >= 0"),
    ({"axes": {"seed": [1, 1]}}, "lists a value twice"),
    ({"sweep": {"mst_depth": 0}}, 'mst_depth = 0: expected a positive whole number or "none"'),
    ({"sweep": {"build": True}}, 'build = true but every point has board = "none"'),
    ({"sweep": {"samples": 3}, "axes": {"seed": [0, 1]}}, "samples = 3 but the grid has only 2"),
    ({"grid": {}}, r"unknown table \[grid\]"),
])
def test_bad_specs_name_the_problem(data, match):
    with pytest.raises(SweepError, match=match):
        parse_spec(data)


def test_cli_refuses_a_bad_spec_in_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[axes]\narch = [\"tfc\"\n")
    out = tmp_path / "out"
    assert main(["sweep", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bnnforge sweep: error: spec {bad} is not valid TOML")
    assert "\n" not in err and not out.exists()
    assert main(["sweep", str(tmp_path / "missing.toml"), "-o", str(out)]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
    good = _spec(tmp_path, "[axes]\nseed = [0]\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["sweep", str(good), "-o", str(tmp_path / "taken")]) == 2
    assert "is not empty and is not a bnnforge sweep" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "taken")) == ["notes.txt"]
    assert main(["sweep", str(good), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9",
                 "--workers", "2"]) == 2
    assert "--workers sizes the local cluster" in capsys.readouterr().err


def test_dry_run_lists_the_points(tmp_path, capsys):
    spec = _spec(tmp_path, '[axes]\nquantizer = ["ste", "biper"]\nfps = [0, 5000]\n')
    assert main(["sweep", str(spec), "-o", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "4 points (4 in the grid) over quantizer, fps:"
    assert [line.split()[0] for line in lines[1:]] == [point_id(p)
                                                       for p in load_spec(spec).points]
    assert not (tmp_path / "out").exists()


@pytest.mark.cluster
def test_unreachable_scheduler_is_one_line(tmp_path, capsys):
    spec = _spec(tmp_path, "[axes]\nseed = [0]\n")
    code = main(["sweep", str(spec), "-o", str(tmp_path / "out"), "--no-progress",
                 "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert "start one with 'dask scheduler'" in err


# -- a local cluster: results, failures, resumption -------------------------------------------
@pytest.mark.pnr
def test_local_sweep_records_failures_and_resumes(tmp_path):
    spec = _spec(tmp_path, """
build = true

[axes]
quantizer = ["ste", "approx_sign"]
board = ["none", "icebreaker"]
fps = [0, 1e9]
""")
    out = tmp_path / "out"
    rows = run_sweep(spec, out, workers=2, progress=False)
    assert len(rows) == 8
    by = {(r["quantizer"], r["board"], r["fps_target"]): r for r in rows}
    # 1e9 frames/s on the iCEBreaker cannot be met: recorded, and the sweep went on
    for q in ("ste", "approx_sign"):
        failed = by[(q, "icebreaker", 1e9)]
        assert failed["status"] == "error" and failed["error"].startswith("compile: ")
        assert "\n" not in failed["error"]
        assert failed["luts"] is None and failed["report"] is None
        # the point with a board has a bitstream: placed resources and Fmax in the row
        ok = by[(q, "icebreaker", None)]
        assert ok["status"] == "ok" and ok["resources"] == "placed"
        build = out / "points" / ok["point"] / "build"
        # the clock the timing-aware compile chose, which the placed design meets
        assert ok["clock_mhz"] == json.loads((build / "report.json").read_text())[
            "compile"]["clock_mhz"] >= 30.0
        assert ok["luts"] > 0 and ok["ffs"] > 0 and ok["fmax_mhz"] >= ok["clock_mhz"]
        assert ok["fps"] > 0 and ok["energy_nj"] > 0
        assert json.loads((build / "report.json").read_text())["build"]["luts_used"] == ok["luts"]
        assert list((build / "bitstream").glob("*.bin"))
        assert 0 < ok["accuracy"] <= 1 and ok["disagreements"] == 0
        assert ok["mst_reduction"] > 1 and ok["attempts"] == 1
        assert (out / ok["report"]).is_file()
        # without a board: 1e9 frames/s is out of reach of the input stream at 100 MHz too
        fast = by[(q, "none", 1e9)]
        assert fast["status"] == "error" and "1 cycles per frame" in fast["error"]
        plain = by[(q, "none", None)]                     # no board: not built, estimated
        assert plain["status"] == "ok" and plain["resources"] == "estimate"
        assert plain["luts"] > 0 and plain["fmax_mhz"] is None
    # one training per quantizer, shared by the four hardware points
    assert len(list((out / "models").glob("*.bnn"))) == 2
    table = read_results(out)
    assert [r["point"] for r in table] == [r["point"] for r in rows]
    assert list(table[0]) == list(COLUMNS)
    assert (out / "index.html").is_file()
    assert all((out / f).is_file() for f in ("pareto_accuracy_luts.png", "pareto_fps_luts.png",
                                              "pareto_energy_fps.png"))
    before = {r["point"]: (out / "points" / r["point"] / "attempts.log").read_text()
              for r in rows}
    # rerun: nothing is redone
    again = run_sweep(spec, out, workers=1, progress=False)
    assert again == rows
    assert {p: (out / "points" / p / "attempts.log").read_text() for p in before} == before
    # a changed spec runs only its new points; the failed points run again only when asked
    spec.write_text(spec.read_text().replace('fps = [0, 1e9]', 'fps = [0, 1e9, 2000]'))
    grown = run_sweep(spec, out, workers=2, progress=False)
    assert len(grown) == 12
    new = [r for r in grown if r["point"] not in before]
    assert len(new) == 4 and all(r["fps_target"] == 2000 for r in new)
    assert all((out / "points" / p / "attempts.log").read_text() == before[p] for p in before)
    retried = run_sweep(spec, out, workers=2, progress=False, retry_failed=True)
    for r in retried:
        runs = len((out / "points" / r["point"] / "attempts.log").read_text().splitlines())
        assert runs == (2 if r["status"] == "error" else 1)


# -- a real Dask cluster on 127.0.0.1, one worker killed mid-point ------------------------------
def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(what: str, check, timeout: float = 120.0, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode} while waiting "
                                     f"for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def cluster(tmp_path):
    """A dask scheduler and two single-threaded workers (no nanny) on 127.0.0.1."""
    file = tmp_path / "scheduler.json"
    procs = [_start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(file)], tmp_path / "sched.log")]
    address = json.loads(_wait_for("the scheduler file", lambda: file.is_file()
                                   and file.read_text(), procs=procs))["address"]
    workers = [_start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                       "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"],
                      tmp_path / f"worker{i}.log") for i in range(2)]
    procs += workers

    def ready():
        from distributed import Client

        with Client(address, timeout="10s") as client:
            return len(client.scheduler_info()["workers"]) == 2

    _wait_for("two workers", ready, procs=procs)
    yield address, workers
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL if p in workers else signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.cluster
@pytest.mark.rtl
@pytest.mark.browser
def test_sweep_survives_a_killed_worker_and_renders_in_chromium(tmp_path, cluster):
    address, workers = cluster
    spec = _spec(tmp_path, """
verify = "icarus"
verify_frames = 4

[axes]
quantizer = ["ste", "reste"]
fps = [0, 200000, 100000]
""")
    out = tmp_path / "out"
    run = subprocess.Popen([str(BIN / "bnnforge"), "sweep", str(spec), "-o", str(out),
                            "--scheduler", address], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    pids = {w.pid: w for w in workers}

    def running_point():
        """A point that a worker started in the last second and has not finished."""
        for log in (out / "points").glob("*/attempts.log") if out.exists() else ():
            if (log.parent / "result.json").exists() or time.time() - log.stat().st_mtime > 1:
                continue
            lines = log.read_text().splitlines()
            if len(lines) == 1 and int(lines[0].split()[-1]) in pids:
                return log.parent.name, int(lines[0].split()[-1])
        return None

    victim_point, victim_pid = _wait_for("a point in flight", running_point, procs=[run])
    os.kill(victim_pid, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
    assert "6 points: 6 ok, 0 failed" in stdout
    assert pids[victim_pid].wait(timeout=10) == -signal.SIGKILL
    rows = read_results(out)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["point"] for r in rows} == {point_id(p) for p in load_spec(spec).points}
    # the killed point ran again on the other worker and finished there
    killed = next(r for r in rows if r["point"] == victim_point)
    assert killed["attempts"] == 2
    log = (out / "points" / victim_point / "attempts.log").read_text().splitlines()
    assert int(log[0].split()[-1]) == victim_pid and int(log[1].split()[-1]) != victim_pid
    # every point was checked as RTL on Icarus inside a worker: values and cycles exact
    assert all(r["value_mismatches"] == 0 and r["cycle_mismatches"] == 0 for r in rows)

    # both pages in a real browser
    index = check_page(out / "index.html", tmp_path / "index.png")
    assert not index["console_errors"] and not index["page_errors"]
    assert not index["failed_requests"]
    assert len(index["images"]) == 3 and all(img["ok"] for img in index["images"])
    for r in rows:
        assert r["point"] in index["text"]
    stats = screenshot_stats(tmp_path / "index.png")
    assert stats["width"] >= 1280 and stats["nonwhite"] > 0.02 and stats["colours"] > 50
    report = check_page(out / rows[0]["report"], tmp_path / "report.png")
    assert not report["console_errors"] and not report["page_errors"]
    assert not report["failed_requests"]
    srcs = sorted(Path(img["src"]).name for img in report["images"])
    assert srcs == ["sim_cycles.png", "sim_energy.png"]
    assert all(img["ok"] for img in report["images"])
    assert f"{rows[0]['fps']:,.0f}" in report["text"]
    assert screenshot_stats(tmp_path / "report.png")["nonwhite"] > 0.02


# -- sweeping the hardware of a model you bring ------------------------------------------------
@pytest.mark.cluster
def test_model_points_compile_a_given_model_file(tmp_path):
    """`model = "m.bnn"` / `"tfc.onnx"`: no training; a changed file makes new points."""
    import torch
    from brevitas_examples.bnn_pynq.models import model_with_cfg
    from qonnx_helpers import export

    from bnnforge.flow import train_model

    train_model("tfc", "digits", "ste", tmp_path / "m.bnn", epochs=1, progress=False)
    torch.manual_seed(0)
    brevitas, _ = model_with_cfg("tfc_1w1a", pretrained=False)
    export(brevitas.eval(), tmp_path / "tfc.onnx", "dynamo", (1, 1, 28, 28))
    spec = tmp_path / "spec.toml"
    spec.write_text('[sweep]\nframes = 50\n\n[axes]\nmodel = ["m.bnn", "tfc.onnx"]\n'
                    'fps = [0, 100000]\n')
    out = tmp_path / "out"
    rows = run_sweep(spec, out, workers=1, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    assert [r["arch"] for r in rows] == ["m.bnn", "m.bnn", "tfc.onnx", "tfc.onnx"]
    assert all(r["quantizer"] is None and r["train_s"] is None for r in rows)
    assert rows[0]["accuracy"] > 0 and rows[0]["disagreements"] == 0     # digits, from meta
    assert rows[2]["accuracy"] is None and rows[2]["fps"] > 0            # no dataset
    assert not (out / "models").exists()
    # the same file again: nothing runs; a retrained file: its two points are new
    assert run_sweep(spec, out, workers=1, progress=False) == rows
    train_model("tfc", "digits", "ste", tmp_path / "m.bnn", epochs=1, seed=1, progress=False)
    again = run_sweep(spec, out, workers=1, progress=False)
    assert [r["point"] for r in again[2:]] == [r["point"] for r in rows[2:]]
    assert not {r["point"] for r in again[:2]} & {r["point"] for r in rows[:2]}


@pytest.mark.parametrize("data, match", [
    ({"sweep": {"model": "nothere.bnn"}}, r"model 'nothere.bnn' does not exist"),
    ({"sweep": {"model": "m.bnn"}, "axes": {"quantizer": ["ste", "reste"]}},
     r"\[axes\] quantizer sweeps a training setting, but points with a model file do not"),
    ({"sweep": {"model": 3}}, r"model = 3: expected a model file path"),
])
def test_bad_model_settings(tmp_path, data, match):
    (tmp_path / "m.bnn").write_bytes(b"x")
    with pytest.raises(SweepError, match=match):
        parse_spec(data, base=tmp_path)
