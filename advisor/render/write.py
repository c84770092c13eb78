"""Write a rendered set into a folder: each file atomically (temp file in the same folder + os.replace), and
never into an existing non-empty folder unless ``force``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import AdvisorError
from .render import EXECUTABLE, FILE_DESCRIPTIONS


class OutputExistsError(AdvisorError):
    """The output folder exists and is not empty: exit 2, one line."""

    exit_code = 2


def write_files(files: dict[str, str], out_dir: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Write ``files`` (name → text) into ``out_dir``; returns the paths written.

    All files are first written to temporary files in ``out_dir`` and then moved into place with
    ``os.replace``, so a reader never sees a half-written file and an interrupted run leaves no partial
    file under a final name. With ``force``, files dsadvise writes that the new set does not contain (a
    ``ds_config.json`` from an earlier DeepSpeed render, say) are removed; other files are left alone.
    """
    out = Path(out_dir).expanduser()
    for name in files:
        if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
            raise ValueError(f"refusing to write an unsafe file name: {name!r}")
    try:
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"{out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise OutputExistsError(f"{out}: exists and is not empty; pass --force to overwrite")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputExistsError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None

    temps: dict[str, str] = {}
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            temps[name] = tmp
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o755 if name in EXECUTABLE or name.endswith(".sh") else 0o644)
        written = []
        for name, tmp in temps.items():
            os.replace(tmp, out / name)
            written.append(out / name)
        temps.clear()
    except OSError as exc:
        raise OutputExistsError(f"{out}: cannot write ({exc.strerror or exc})") from None
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)
            except OSError:
                pass
    if force:
        for stale in set(FILE_DESCRIPTIONS) - set(files):
            path = out / stale
            if path.is_file():
                path.unlink()
    _fsync_dir(out)
    return written


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
