"""The result cache: every measurement, committed in ``benchmarks/results/<kind>.json``, keyed so that a
stale one is recognized.

A measurement depends on the harness code that made it, on the case and on the libraries, so its key is::

    key = sha256(canonical JSON of {"harness": harness_hash(kind), "case": case.identity(),
                                    "versions": versions()})[:16]

* ``harness_hash(kind)``: sha256 of the kind module's and its ``SOURCES`` modules' code, each parsed and
  dumped without docstrings (``ast.dump``), so comments and docstrings do not invalidate results and any
  code change does. A kind module's presentation and estimator side (top-level ``compare``, ``label``,
  ``TITLE``, ``DESCRIPTION``, ``COLUMNS``, ``UNIT``, ``ORDER``) are left out, as are ``estimates.py``, the
  docs writer and ``advisor/``: a report re-estimates every row, a measurement stays valid.
* ``case.identity()``: the kind, the case's settings, its resolved model config (a catalog config that
  changes invalidates its cases) and whatever else the kind's optional ``identity(case)`` adds (the ZeRO
  kind: dsadvise's rendered ``ds_config.json``, which the engine runs with).
* ``versions()``: torch, transformers, deepspeed, accelerate (installed distributions).

File format (one JSON object per kind, entries by case label, sorted, indented: diffs stay readable)::

    {"kind": "saved", "format": 1,
     "entries": {"<label>": {"key", "harness", "versions", "case", "group", "measured",
                             "cuda_semantics", "cpu_s", "wall_s", "measured_at", "machine"}}}

``measured`` is what the kind's ``measure`` returned less its ``cuda_semantics`` record, which is stored
beside it. ``cpu_s`` counts this process and its waited-for children (torchrun workers).
"""

from __future__ import annotations

import ast
import datetime as _dt
import functools
import hashlib
import json
import platform
import resource
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from benchmarks.harness.cases import Case, canonical

HARNESS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = HARNESS_DIR.parent / "results"
LIBRARIES = ("torch", "transformers", "deepspeed", "accelerate")
FORMAT = 1


def versions() -> dict[str, str]:
    """Installed versions of the libraries a measurement depends on (``"absent"`` when not installed)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


# top-level names of a kind module that do not take part in measuring (see the module doc)
PRESENTATION = frozenset({"compare", "label", "TITLE", "DESCRIPTION", "COLUMNS", "UNIT", "ORDER"})


def _drop_top_level(tree: ast.Module, names: frozenset[str]) -> ast.Module:
    def keep(node: ast.stmt) -> bool:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return node.name not in names
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            return not all(isinstance(t, ast.Name) and t.id in names for t in targets)
        return True

    tree.body = [n for n in tree.body if keep(n)]
    return tree


def code_hash(path: Path, exclude: frozenset[str] = frozenset()) -> str:
    """sha256 of a Python file's code without docstrings and comments (``ast.dump``, no positions), less
    the top-level definitions named in ``exclude``."""
    tree = _drop_top_level(_strip_docstrings(ast.parse(path.read_text(encoding="utf-8"))), exclude)
    return hashlib.sha256(ast.dump(tree, annotate_fields=True, include_attributes=False).encode()).hexdigest()


def harness_files(kind_name: str, harness_dir: Path | None = None) -> list[Path]:
    """The files whose code a kind's measurements depend on: the kind module and its ``SOURCES``."""
    from benchmarks.harness.kinds import kind

    mod = kind(kind_name)
    names = sorted({f"kinds/{kind_name}", *mod.SOURCES})
    return [(harness_dir or HARNESS_DIR) / f"{n}.py" for n in names]


def harness_hash(kind_name: str) -> str:
    """sha256 over :func:`code_hash` of every file of :func:`harness_files` (with their names), computed
    once per process and directory: the code this process loaded, not later edits of the files."""
    return _harness_hash(kind_name, HARNESS_DIR)


@functools.lru_cache(maxsize=None)
def _harness_hash(kind_name: str, harness_dir: Path) -> str:
    h = hashlib.sha256()
    for path in harness_files(kind_name, harness_dir):
        rel = path.relative_to(harness_dir).as_posix()
        h.update(f"{rel}:{code_hash(path, PRESENTATION if rel.startswith('kinds/') else frozenset())}\n".encode())
    return h.hexdigest()


def key_parts(case: Case) -> dict[str, Any]:
    """What the key hashes for ``case`` under the current harness and libraries."""
    return {"harness": harness_hash(case.kind), "case": case.identity(), "versions": versions()}


def key_of(parts: dict[str, Any]) -> str:
    """The 16-hex-digit key of :func:`key_parts`."""
    return hashlib.sha256(canonical(parts).encode()).hexdigest()[:16]


@dataclass
class Status:
    """A case's standing in the cache: ``fresh``, ``missing`` or ``stale`` (then ``why``)."""

    case: Case
    state: str
    why: str = ""
    entry: dict[str, Any] | None = None


def path_of(kind_name: str, results_dir: Path | None = None) -> Path:
    return (results_dir or RESULTS_DIR) / f"{kind_name}.json"


def load(kind_name: str, results_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The entries of ``results/<kind>.json`` by case label ({} when there is no file)."""
    path = path_of(kind_name, results_dir)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT or data.get("kind") != kind_name:
        raise ValueError(f"{path}: not a format-{FORMAT} cache of kind {kind_name!r}")
    return data["entries"]


def save(kind_name: str, entries: dict[str, dict[str, Any]], results_dir: Path | None = None) -> Path:
    """Write ``results/<kind>.json`` (entries sorted by label)."""
    path = path_of(kind_name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"kind": kind_name, "format": FORMAT, "entries": dict(sorted(entries.items()))}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def status(case: Case, entries: dict[str, dict[str, Any]], parts: dict[str, Any] | None = None) -> Status:
    """Whether ``entries`` hold a measurement of ``case`` made by the current harness and libraries."""
    entry = entries.get(case.label)
    if entry is None:
        return Status(case, "missing", "not in the cache")
    parts = parts or key_parts(case)
    if entry.get("key") == key_of(parts):
        return Status(case, "fresh", entry=entry)
    why = []
    if entry.get("harness") != parts["harness"]:
        why.append("harness code changed")
    old_case = entry.get("case") or {}
    if canonical(old_case) != canonical(parts["case"]):
        changed = sorted(k for k in set(old_case.get("config", {})) | set(parts["case"]["config"])
                         if old_case.get("config", {}).get(k) != parts["case"]["config"].get(k))
        why.append("case changed" + (f" (config: {', '.join(changed)})" if changed else " (settings)"))
    for lib, ver in parts["versions"].items():
        old = (entry.get("versions") or {}).get(lib)
        if old != ver:
            why.append(f"{lib} {old} -> {ver}")
    return Status(case, "stale", "; ".join(why) or "key mismatch", entry)


def measure_into(case: Case, entries: dict[str, dict[str, Any]], measure: Callable[[Case], dict[str, Any]],
                 parts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure ``case`` now and store the entry (with key, CPU and wall seconds) in ``entries``."""
    parts = parts or key_parts(case)
    r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    result = dict(measure(case))
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) + (c1.ru_utime + c1.ru_stime - c0.ru_utime
                                                                       - c0.ru_stime)
    semantics = result.pop("cuda_semantics", None)
    if semantics is None:
        raise RuntimeError(f"kind {case.kind!r} returned no cuda_semantics record for {case.label}")
    entry = {"key": key_of(parts), **parts, "group": case.group, "measured": result,
             "cuda_semantics": semantics, "cpu_s": round(cpu, 1), "wall_s": round(time.time() - t0, 1),
             "measured_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": f"{platform.machine()} {platform.system()}"}
    entries[case.label] = entry
    return entry
