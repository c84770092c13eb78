"""The one command: measure what the cache lacks, compare every case with dsadvise, print or write the docs.

    python -m benchmarks.accuracy                      # report from the cache; refuses missing/stale cases
    python -m benchmarks.accuracy --measure --write docs/accuracy.md   # rerun everything needed, write docs
    python -m benchmarks.accuracy --measure --kind saved --quick       # measure a subset (then report)
    python -m benchmarks.accuracy --partial --write docs/accuracy.md   # fresh rows only, the rest listed

Filters (``--kind``, ``--group``, ``--quick``, ``--only``) choose what ``--measure`` measures; the report
always covers every case of every kind, so a written doc is complete or says which rows it lacks.
Exit status: 0 when every reported row is fresh (or ``--partial``), 1 when cases are missing or stale
(each named with the reason), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.harness import cache, cases
from benchmarks.harness.kinds import kind, names


def _select(all_cases: list[cases.Case], a: argparse.Namespace) -> list[cases.Case]:
    return [c for c in all_cases if (not a.quick or c.quick) and a.only in c.label
            and (not a.group or c.group == a.group)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accuracy",
                                 description="dsadvise's memory estimates against CPU ground truth")
    ap.add_argument("--measure", nargs="?", const="stale", choices=("stale", "all"),
                    help="measure the selected cases that are missing or stale (or all of them) first")
    ap.add_argument("--kind", action="append", default=[], help=f"only this kind (repeatable): {', '.join(names())}")
    ap.add_argument("--group", choices=cases.GROUPS, help="only this group of cases")
    ap.add_argument("--quick", action="store_true", help="only the cases marked quick")
    ap.add_argument("--only", default="", metavar="TEXT", help="only cases whose label contains TEXT")
    ap.add_argument("--write", metavar="PATH", help="write the markdown report (docs/accuracy.md) to PATH")
    ap.add_argument("--partial", action="store_true",
                    help="report the fresh rows and list missing/stale cases instead of refusing")
    ap.add_argument("--results", metavar="DIR", type=Path, help="cache directory (default benchmarks/results)")
    a = ap.parse_args(argv)
    unknown = [k for k in a.kind if k not in names()]
    if unknown:
        ap.error(f"unknown kind {', '.join(unknown)} (kinds: {', '.join(names())})")

    every = {k: cases.load(k) for k in names()}
    if a.measure:
        for k in a.kind or names():
            _measure_kind(k, _select(every[k], a), a.measure == "all", a.results)

    from benchmarks.harness import tables

    report = tables.collect(every, a.results)
    print(tables.text(report))
    if report.not_fresh and not a.partial:
        print(f"\n{len(report.not_fresh)} case(s) not measured under the current harness and libraries "
              "(rerun with --measure, or --partial to report the rest):", file=sys.stderr)
        for st in report.not_fresh:
            print(f"  {st.state:<7} {st.case.kind}: {st.case.label} ({st.why})", file=sys.stderr)
        return 1
    if a.write:
        command = "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(a.write).write_text(tables.markdown(report, command.strip()), encoding="utf-8")
        print(f"wrote {a.write}")
    return 0


def _measure_kind(name: str, selected: list[cases.Case], force: bool, results_dir: Path | None) -> None:
    mod = kind(name)
    for case in selected:
        parts = cache.key_parts(case)
        st = cache.status(case, cache.load(name, results_dir), parts)
        if st.state == "fresh" and not force:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] measuring {name}: {case.label} ({st.why or 'forced'})", flush=True)
        entries: dict = {}
        entry = cache.measure_into(case, entries, mod.measure, parts)
        fresh = cache.load(name, results_dir)        # re-read: another run may have stored entries meanwhile
        fresh.update(entries)
        cache.save(name, fresh, results_dir)
        print(f"    {entry['measured']}  ({entry['cpu_s']} CPU s, {entry['wall_s']} s)", flush=True)
