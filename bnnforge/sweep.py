"""Design-space sweeps (``bnnforge sweep SPEC.toml -o DIR``) on Dask.

A spec names settings; each is one value (``[sweep]``) or a list of values (``[axes]``). The
points are the product of the axes (or ``samples`` points drawn from it at random). Every point
trains its model (cached in ``DIR/models`` by a content hash of the training settings, so points
that differ only in hardware settings share one training), compiles it, simulates it and
optionally verifies it as RTL and builds its bitstream, in its own build folder
``DIR/points/<id>/build``. The table ``DIR/results.csv`` has one row per point; ``DIR/index.html``
shows the Pareto fronts and links every point's ``report.html``.

The points run as Dask tasks: on a :class:`distributed.LocalCluster` (one single-threaded worker
process per core) or on an existing cluster (``scheduler="tcp://HOST:PORT"``). Only the output
folder is shared between the workers and the client. A point that fails is recorded with its
one-line error; a worker that dies mid-point loses nothing (Dask runs the point again elsewhere
and the point's build folder is rewritten from scratch). A point whose ``result.json`` exists is
finished and is not run again; a point's id is the hash of all its settings, so a spec that
changes a point makes a new point.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import socket
import time
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compiler.serialize import atomic_write_bytes

__all__ = ["SETTINGS", "SweepSpec", "SweepError", "load_spec", "parse_spec", "run_sweep",
           "run_point", "train_point", "point_row", "read_results"]

# bump when a change in the flow makes old cached models or finished points invalid
_CACHE_VERSION = 1
# the value of an optional setting that is off ("board", "verify", "mst_depth")
_NONE = "none"


class SweepError(ValueError):
    """A sweep spec or output folder that cannot be used."""


def _choice(values):
    def check(name, v):
        if v not in values:
            raise SweepError(f"{name} = {v!r} is not one of {', '.join(map(str, values))}")
        return v
    return check


def _number(kind, minimum, what):
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                kind is int and not float(v).is_integer()) or v < minimum:
            raise SweepError(f"{name} = {v!r}: expected {what}")
        return kind(v)
    return check


def _flag(name, v):
    if not isinstance(v, bool):
        raise SweepError(f"{name} = {v!r}: expected true or false")
    return v


def _depth(name, v):
    if v == _NONE:
        return _NONE
    return _number(int, 1, 'a positive whole number or "none"')(name, v)


def _model(name, v):
    if not isinstance(v, str) or not v:
        raise SweepError(f"{name} = {v!r}: expected a model file path or \"none\"")
    return v


def _settings() -> dict:
    from .boards.profiles import BOARDS
    from .nn.archs import ARCHS
    from .nn.datasets import DATASETS
    from .nn.quantizers import QUANTIZERS

    return {
        # name: (default, check, what it sets)
        "arch": ("tfc", _choice(ARCHS), "architecture (train --arch)"),
        "dataset": ("mnist5k", _choice(DATASETS), "dataset (train --dataset)"),
        "quantizer": ("ste", _choice(QUANTIZERS), "binarizer (train --quantizer)"),
        "epochs": (10, _number(int, 1, "a positive whole number"), "training epochs"),
        "input_bits": (1, _choice((1, 8)), "first-layer input bits (1 or 8)"),
        "shift": (0, _number(int, 0, "a whole number >= 0"), "training shift augmentation"),
        "mst_reg": (0.0, _number(float, 0, "a number >= 0"), "MST regularizer weight"),
        "seed": (0, _number(int, 0, "a whole number >= 0"), "training seed"),
        "board": (_NONE, _choice((_NONE, *BOARDS)), 'board to fit (compile --board), or "none"'),
        "fps": (0, _number(float, 0, "a number >= 0 (0: the fastest that fits)"),
                "target frames/s (compile --fps; 0: fastest that fits / default)"),
        "clock_mhz": (0, _number(float, 0, "a number >= 0 (0: the board's clock, else 100)"),
                      "design clock in MHz (0: the board's, else 100)"),
        "mst": (False, _flag, "MST-compressed layers where cheaper (compile --mst)"),
        "mst_depth": (_NONE, _depth, 'MST depth bound (compile --mst-depth), or "none"'),
        "frames": (1000, _number(int, 1, "a positive whole number"), "frames to simulate"),
        "verify": (_NONE, _choice((_NONE, "verilator", "icarus")),
                   'RTL check on this simulator, or "none"'),
        "verify_frames": (20, _number(int, 1, "a positive whole number"), "frames to verify"),
        "build": (False, _flag, "place and route a bitstream (points with a board)"),
        "model": (_NONE, _model, 'a model file (.bnn, or QONNX .onnx) to compile instead of '
                  'training one, relative to the spec; "none": train'),
    }


SETTINGS = tuple(_settings())
_TRAIN_KEYS = ("arch", "dataset", "quantizer", "epochs", "input_bits", "shift", "mst_reg", "seed")
_SWEEP_ONLY = {"samples": 0, "sample_seed": 0, "title": "bnnforge sweep"}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec: the fixed settings, the axes and the points they make."""

    fixed: dict
    axes: dict
    samples: int
    sample_seed: int
    title: str
    grid_size: int
    points: tuple

    def summary(self) -> dict:
        """Axes and fixed settings, for reports."""
        return {"axes": {k: list(v) for k, v in self.axes.items()},
                "fixed": dict(self.fixed), "grid": self.grid_size, "points": len(self.points),
                "samples": self.samples, "sample_seed": self.sample_seed}


def _hash(data: dict, n: int) -> str:
    text = json.dumps({"v": _CACHE_VERSION, **data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def train_key(point: dict) -> str:
    """The content hash of a point's training settings (its model's cache name)."""
    return _hash({k: point[k] for k in _TRAIN_KEYS}, 16)


def point_id(point: dict) -> str:
    """The content hash of all a point's settings (its folder name and row id); a point that
    compiles a given model file hashes that file's content too."""
    data = {k: point[k] for k in SETTINGS if k != "model" or point[k] != _NONE}
    if point["model"] != _NONE:
        data["model_sha256"] = point["model_sha256"]
    return _hash(data, 12)


def parse_spec(data: dict, where: str = "spec", base: Path | None = None) -> SweepSpec:
    """Check a spec (a parsed TOML document) and expand it into points.

    ``base`` is the folder that relative ``model`` paths start from (the spec's own folder;
    default the working folder). Raises :class:`SweepError` naming the offending key and what
    is expected.
    """
    settings = _settings()
    unknown = sorted(set(data) - {"sweep", "axes"})
    if unknown:
        raise SweepError(f"{where}: unknown table [{unknown[0]}]; a spec has [sweep] (one value "
                         "per setting) and [axes] (a list of values per setting)")
    sweep = data.get("sweep", {})
    axes_in = data.get("axes", {})
    if not isinstance(sweep, dict) or not isinstance(axes_in, dict):
        raise SweepError(f"{where}: [sweep] and [axes] must be tables")
    known = ", ".join(SETTINGS)
    for table, keys, extra in (("sweep", sweep, _SWEEP_ONLY), ("axes", axes_in, {})):
        for key in keys:
            if key not in settings and key not in extra:
                raise SweepError(f"{where}: unknown setting {key!r} in [{table}]; settings are "
                                 f"{known}" + (", samples, sample_seed, title"
                                               if table == "sweep" else ""))
    both = sorted(set(sweep) & set(axes_in))
    if both:
        raise SweepError(f"{where}: {both[0]!r} is in [sweep] and in [axes]; give it once")
    fixed = {}
    for key, (default, check, _) in settings.items():
        if key in sweep:
            value = sweep[key]
            if isinstance(value, list):
                raise SweepError(f"{where}: [sweep] {key} is a list; move it to [axes] to sweep "
                                 "over it")
            fixed[key] = check(key, value)
        elif key not in axes_in:
            fixed[key] = default
    axes = {}
    for key, values in axes_in.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: [axes] {key} must be a non-empty list of values, not "
                             f"{values!r}")
        checked = [settings[key][1](key, v) for v in values]
        if len(set(map(repr, checked))) != len(checked):
            raise SweepError(f"{where}: [axes] {key} lists a value twice: {values!r}")
        axes[key] = checked
    samples = _number(int, 0, "a whole number >= 0")("samples", sweep.get("samples", 0))
    sample_seed = _number(int, 0, "a whole number >= 0")("sample_seed",
                                                         sweep.get("sample_seed", 0))
    title = sweep.get("title", _SWEEP_ONLY["title"])
    if not isinstance(title, str):
        raise SweepError(f"{where}: title must be a string, not {title!r}")
    names = list(axes)
    grid = [dict(fixed, **dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*(axes[n] for n in names))]
    _check_points(grid, where)
    _given_models(grid, axes, where, base)
    if samples:
        if samples > len(grid):
            raise SweepError(f"{where}: samples = {samples} but the grid has only {len(grid)} "
                             "points; lower samples or add axis values")
        rng = np.random.default_rng(sample_seed)
        picked = sorted(rng.choice(len(grid), size=samples, replace=False).tolist())
        points = [grid[i] for i in picked]
    else:
        points = grid
    return SweepSpec(fixed=fixed, axes=axes, samples=samples, sample_seed=sample_seed,
                     title=title, grid_size=len(grid), points=tuple(points))


def _check_points(points: list[dict], where: str) -> None:
    """Refuse a spec whose settings no point could use, before anything runs."""
    if any(p["build"] for p in points) and all(p["board"] == _NONE for p in points):
        raise SweepError(f'{where}: build = true but every point has board = "none"; a '
                         "bitstream needs a board: set board (points without one are not "
                         "built) or build = false")


def _given_models(points: list[dict], axes: dict, where: str, base: Path | None) -> None:
    """Resolve and fingerprint the model files of points that compile a given model; such a
    point does not train, so its training settings are dropped (None)."""
    if not any(p["model"] != _NONE for p in points):
        return
    swept = [k for k in _TRAIN_KEYS if k in axes]
    if swept:
        raise SweepError(f"{where}: [axes] {swept[0]} sweeps a training setting, but points with "
                         "a model file do not train: drop the axis or the model")
    digests: dict[str, tuple[str, str]] = {}
    for point in points:
        given = point["model"]
        if given == _NONE:
            continue
        if given not in digests:
            path = Path(given) if Path(given).is_absolute() else (base or Path.cwd()) / given
            if not path.is_file():
                raise SweepError(f"{where}: model {given!r} does not exist ({path}); give a "
                                 ".bnn or .onnx file, relative to the spec")
            digests[given] = (str(path.resolve()),
                              hashlib.sha256(path.read_bytes()).hexdigest())
        point["model"], point["model_sha256"] = digests[given]
        point.update(dict.fromkeys(_TRAIN_KEYS))


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and check the TOML spec at ``path``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"spec {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SweepError(f"spec {path} is not valid TOML ({exc})") from None
    return parse_spec(data, where=str(path), base=path.parent)


# -- the work of one point (runs inside a Dask worker) ----------------------------------------
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ValueError) else text


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(1)


def train_point(out: str, point: dict) -> dict:
    """Train (or reuse) the model of ``point`` in ``out/models``; return where it is.

    Returns ``{"path", "accuracy_torch", "train_s", "error"}``; a failure is
    returned as ``error`` (one line), not raised, so the points that need the model record it.
    """
    from .flow import train_model
    from .modelfile import read_info

    key = train_key(point)
    models = Path(out) / "models"
    models.mkdir(parents=True, exist_ok=True)
    path = models / f"{key}.bnn"
    result = {"path": str(path), "accuracy_torch": None, "train_s": None, "error": None}
    try:
        if not path.exists():
            _limit_threads()
            tmp = models / f".{key}.{os.getpid()}.{socket.gethostname()}.bnn"
            meta = train_model(point["arch"], point["dataset"], point["quantizer"], tmp,
                               epochs=point["epochs"], input_bits=point["input_bits"],
                               seed=point["seed"], mst_reg=point["mst_reg"],
                               shift=point["shift"], progress=False)
            atomic_write_bytes(path.with_suffix(".json"),
                               json.dumps({"train_s": round(meta["train_seconds"], 3)}).encode())
            os.replace(tmp, path)               # the model's presence marks the training done
        result["accuracy_torch"] = read_info(path)["meta"].get("accuracy_torch")
        timing = path.with_suffix(".json")
        if timing.exists():
            result["train_s"] = json.loads(timing.read_text()).get("train_s")
    except Exception as exc:  # noqa: BLE001 - recorded in the point's row
        result["error"] = f"train: {_one_line(exc)}"
    return result


def point_row(point: dict, report: dict) -> dict:
    """The results-table row of ``point`` from its build folder's report (None: not measured)."""
    from .sweep_report import COLUMNS

    m, c = report.get("model", {}), report.get("compile", {})
    s, v, b = report.get("sim", {}), report.get("verify", {}), report.get("build", {})
    row = dict.fromkeys(COLUMNS)
    row.update({k: point[k] for k in SETTINGS if k in row})
    if point["model"] != _NONE:                 # the arch column names the model compiled
        row["arch"] = Path(point["model"]).name
    row["fps_target"] = point["fps"] or None
    row["clock_mhz"] = c.get("clock_mhz") or point["clock_mhz"] or None
    row.update(accuracy=m.get("accuracy_reference"), accuracy_torch=m.get("accuracy_torch"),
               disagreements=m.get("disagreements"), cycles_per_frame=s.get("cycles_per_frame"),
               fps=s.get("fps"), energy_nj=s.get("energy_nj_per_frame"),
               value_mismatches=v.get("value_mismatches"),
               cycle_mismatches=v.get("cycle_mismatches"))
    if s.get("latency_cycles") is not None and s.get("clock_mhz"):
        row["latency_us"] = round(s["latency_cycles"] / s["clock_mhz"], 4)
    mst = c.get("mst") or {}
    row.update(mst_reduction=mst.get("ratio"), mst_max_depth=mst.get("max_depth"))
    if b.get("luts_used") is not None and not b.get("error"):
        row.update(luts=b["luts_used"], ffs=b.get("ffs_used"), brams=b.get("bram_used"),
                   fmax_mhz=b.get("fmax_mhz"), resources="placed")
    elif c.get("resources_estimate"):
        est = c["resources_estimate"]
        row.update(luts=est.get("luts"), brams=est.get("brams"), resources="estimate")
    return row


def run_point(out: str, point: dict, trained: dict) -> dict:
    """Compile, simulate and (as the point asks) verify and build ``point``; return its row.

    The row is also written to ``out/points/<id>/result.json``, which marks the point finished.
    Errors end up in the row's ``error`` (one line, prefixed with the step), never raised.
    """
    from .buildfolder import read_report

    start = time.perf_counter()
    pid = point_id(point)
    folder = Path(out) / "points" / pid
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "attempts.log", "a") as log:
        log.write(f"{socket.gethostname()} pid {os.getpid()}\n")
    attempts = len((folder / "attempts.log").read_text().splitlines())
    build = folder / "build"
    step = "train"
    error = trained.get("error")
    if error is None:
        try:
            _limit_threads()
            step = "compile"
            _compile(point, trained["path"], build)
            step = "sim"
            from .flow import energy_profile
            from .simulate import simulate_build

            family, coefficients = energy_profile(build)
            simulate_build(build, frames=point["frames"], family=family,
                           coefficients=coefficients, progress=False)
            if point["verify"] != _NONE:
                step = "verify"
                from .verify import verify_build

                sec = verify_build(build, simulator=point["verify"],
                                   frames=point["verify_frames"], progress=False)
                if sec["value_mismatches"] or sec.get("cycle_mismatches"):
                    raise ValueError(f"{sec['value_mismatches']} value and "
                                     f"{sec.get('cycle_mismatches')} cycle mismatches")
            if point["build"] and point["board"] != _NONE:
                step = "build"
                from .build import build_board

                build_board(build, point["board"], progress=False,
                            clock_mhz=read_report(build)["compile"]["clock_mhz"])
        except Exception as exc:  # noqa: BLE001 - recorded in the point's row
            error = f"{step}: {_one_line(exc)}"
            if os.environ.get("BNNFORGE_DEBUG"):
                traceback.print_exc()
    # a step after compile failed or none did: this attempt's build folder holds the report
    # (a failed train or compile leaves none of its own; an older attempt's is not this run's)
    report = read_report(build) if step not in ("train", "compile") else {}
    row = point_row(point, report)
    row.update(point=pid, status="error" if error else "ok", error=error,
               train_s=trained.get("train_s"), attempts=attempts,
               wall_s=round(time.perf_counter() - start, 3),
               report=f"points/{pid}/build/report.html" if report else None)
    if row["accuracy_torch"] is None:
        row["accuracy_torch"] = trained.get("accuracy_torch")
    atomic_write_bytes(folder / "result.json", (json.dumps(row, indent=1) + "\n").encode())
    return row


def _compile(point: dict, model: str, build: Path) -> None:
    from .flow import compile_model

    board = None if point["board"] == _NONE else point["board"]
    compile_model(model, build, board=board, fps=point["fps"] or None,
                  clock_mhz=point["clock_mhz"] or None, mst=point["mst"],
                  mst_max_depth=None if point["mst_depth"] == _NONE else point["mst_depth"],
                  rtl=point["verify"] != _NONE or point["build"])


# -- the sweep (runs in the client) -----------------------------------------------------------
def _prepare(out: Path, spec: SweepSpec) -> None:
    if out.exists():
        if not out.is_dir():
            raise SweepError(f"output {out} exists and is not a folder; choose another -o")
        if any(out.iterdir()) and not (out / "sweep.json").is_file():
            raise SweepError(f"output folder {out} is not empty and is not a bnnforge sweep; "
                             "choose another -o or empty it")
    elif not out.parent.exists():
        raise SweepError(f"cannot create {out}: folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    (out / "points").mkdir(exist_ok=True)
    data = {"title": spec.title, **spec.summary(),
            "point_ids": [point_id(p) for p in spec.points]}
    atomic_write_bytes(out / "sweep.json", (json.dumps(data, indent=1, sort_keys=True)
                                            + "\n").encode())


def _finished(out: Path, point: dict, retry_failed: bool) -> dict | None:
    path = out / "points" / point_id(point) / "result.json"
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except ValueError:
        return None                         # a torn file from an older version: run again
    if retry_failed and row.get("status") != "ok":
        return None
    return row


def _csv(rows: list[dict]) -> bytes:
    from .sweep_report import COLUMNS

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return buf.getvalue().encode()


def read_results(out: str | os.PathLike) -> list[dict]:
    """Read ``out/results.csv`` back as rows (numbers as floats, empty cells as None)."""
    rows = []
    with open(Path(out) / "results.csv", newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k, v in raw.items():
                if v == "":
                    row[k] = None
                elif v in ("True", "False"):
                    row[k] = v == "True"
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            rows.append(row)
    return rows


def _error_row(point: dict, error: str) -> dict:
    row = point_row(point, {})
    row.update(point=point_id(point), status="error", error=error, attempts=None)
    return row


def _client(scheduler: str | None, workers: int | None):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler} ({_one_line(exc)});"
                             f" start one with 'dask scheduler' and workers with 'dask worker "
                             f"{scheduler}', or drop --scheduler to run locally") from None
    import logging

    n = workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def run_sweep(spec_path: str | os.PathLike, out: str | os.PathLike, *,
              scheduler: str | None = None, workers: int | None = None,
              retry_failed: bool = False, progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep of ``spec_path`` into ``out``; return one row per point.

    Parameters
    ----------
    spec_path
        The TOML spec (see the module docstring and the README).
    out
        The sweep folder: missing, empty, or an earlier sweep (whose finished points are kept).
    scheduler
        Address of a running Dask scheduler (``tcp://HOST:PORT``); ``None``: a LocalCluster of
        ``workers`` single-threaded processes (default: one per core).
    retry_failed
        Run points again whose earlier run ended in an error.
    progress
        Show a progress bar over the points.
    """
    spec = load_spec(spec_path)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise SweepError(f"--workers must be a positive whole number, not {workers!r}")
    out = Path(out).absolute()
    _prepare(out, spec)
    rows: dict[str, dict] = {}
    todo = []
    for point in spec.points:
        done = _finished(out, point, retry_failed)
        if done is None:
            todo.append(point)
        else:
            rows[point_id(point)] = done

    def save() -> None:
        ordered = [rows[pid] for pid in map(point_id, spec.points) if pid in rows]
        atomic_write_bytes(out / "results.csv", _csv(ordered))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(spec.points), initial=len(rows), desc="sweep", unit="point")
    try:
        if todo:
            _run(out, todo, rows, scheduler, workers, save, bar)
    finally:
        if bar is not None:
            bar.close()
    save()
    ordered = [rows[point_id(p)] for p in spec.points]
    from .sweep_report import write_sweep_report

    write_sweep_report(out, ordered, title=spec.title, summary=spec.summary())
    return ordered


def _run(out: Path, todo: list[dict], rows: dict, scheduler, workers, save, bar) -> None:
    from distributed import as_completed

    client, cluster = _client(scheduler, workers)
    try:
        trains = {}
        futures = {}
        for point in todo:
            if point["model"] != _NONE:         # a given model: nothing to train
                trained = {"path": point["model"], "accuracy_torch": None, "train_s": None,
                           "error": None}
            else:
                key = train_key(point)
                if key not in trains:
                    trains[key] = client.submit(train_point, str(out), point,
                                                key=f"train-{key}", pure=False)
                trained = trains[key]
            pid = point_id(point)
            futures[client.submit(run_point, str(out), point, trained, key=f"point-{pid}",
                                  pure=False)] = point
        for future in as_completed(list(futures)):
            point = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker-level failure (KilledWorker, ...)
                row = _error_row(point, f"dask: {_one_line(exc)}")
            rows[point_id(point)] = row
            save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{row['arch']} {row['quantizer'] or ''} {row['status']}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
