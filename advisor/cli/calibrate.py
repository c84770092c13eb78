"""``dsadvise calibrate``: measure this machine and write the profile ``--profile`` reads (logic in
:mod:`advisor.calibrate`)."""

from __future__ import annotations

import argparse
import sys

from .. import exit_codes
from . import flags


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure this machine (matmul, collectives, host copies, CPU Adam) and "
                                         "write a profile for --profile")
    flags.add(p, ("--out", "--force", "--quick", "--device", "--no-collectives", "--no-deepspeed-adam"),
              out={"metavar": "PATH", "help": "profile file to write (default: ~/.config/dsadvise/profile.yaml, "
                                              "under $XDG_CONFIG_HOME when set)"},
              force={"help": "overwrite an existing profile"})
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure, write the profile (never over an existing one without --force), print what was measured."""
    from ..calibrate import calibrate, summary, write_profile
    from ..profile import default_profile_path

    target = args.out or default_profile_path()
    write_profile_check(target, args.force)
    prof = calibrate(quick=args.quick, device=args.device, collectives=not args.no_collectives,
                     deepspeed_adam=not args.no_deepspeed_adam,
                     progress=lambda what: print(f"dsadvise calibrate: measuring {what}", file=sys.stderr))
    path = write_profile(prof, target, force=args.force)
    print("\n".join(summary(prof)))
    print(f"profile written to {path}; use it with --profile {path}")
    return exit_codes.OK


def write_profile_check(target, force: bool) -> None:
    """Refuse an existing target before minutes of measuring, not after."""
    from pathlib import Path

    from ..errors import InputError

    path = Path(target).expanduser()
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it", field="--out")
