"""The build folder: staged creation (never half-written) and the atomically updated report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .compiler.serialize import atomic_write_bytes

__all__ = ["staged_folder", "read_report", "update_report", "BuildFolderError", "require_build"]


class BuildFolderError(ValueError):
    """The output or build folder cannot be used."""


def _is_build(folder: Path) -> bool:
    return (folder / "graph.json").is_file() or (folder / "report.json").is_file()


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike):
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    ``out`` may be missing, empty, or an earlier bnnforge build folder (which is replaced). If the
    body raises, nothing at ``out`` changes and the temporary folder is removed.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise BuildFolderError(f"output {out} exists and is not a folder; choose another -o")
        if any(out.iterdir()) and not _is_build(out):
            raise BuildFolderError(f"output folder {out} is not empty and is not a bnnforge build; "
                                   "choose another -o or empty it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise BuildFolderError(f"cannot create {out}: folder {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.partial-"))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def require_build(folder: str | os.PathLike) -> Path:
    """Return ``folder`` as a Path if it is a compiled build folder, else raise."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / "graph.json").is_file():
        raise BuildFolderError(f"{folder} is not a bnnforge build folder; create it with "
                               f"'bnnforge compile MODEL -o {folder}'")
    return folder


def read_report(folder: str | os.PathLike) -> dict:
    """Return the build folder's report.json (empty if there is none yet)."""
    path = Path(folder) / "report.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BuildFolderError(f"{path} is corrupt ({exc}); delete it and rerun the step "
                               "that writes it") from None


def update_report(folder: str | os.PathLike, section: str, data: dict) -> dict:
    """Set ``section`` of the build folder's report.json to ``data`` (atomic write).

    Then refresh the folder's report.html from it (:func:`~bnnforge.report_html.write_report_html`).
    """
    from .report_html import write_report_html

    report = read_report(folder)
    report[section] = data
    text = json.dumps(report, sort_keys=True, indent=1) + "\n"
    atomic_write_bytes(Path(folder) / "report.json", text.encode())
    write_report_html(folder)
    return report
