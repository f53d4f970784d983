"""The command line of `exp_*/train.py`: `main(C, argv)`.

Exit codes: 0 the run finished (or `--dry_run` found no problem), 1 `--dry_run` found problems
(all listed), 2 an error stopped the run (printed as `error: ...`), 130 the run was interrupted
(SIGINT/SIGTERM: `interrupted.pth` written; resume with `-c`), as the shell reports a command
stopped by Ctrl-C, so `train.py && eval.py` does not evaluate an unfinished run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from ..engine.dry_run import dry_run
from ..engine.resolve import apply_overrides, key_help
from ..engine.run import fit
from ..errors import CpclError
from ..methods import method_names

EXIT_DRY_RUN_PROBLEMS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells report for a command stopped by Ctrl-C


def _help_config(C: Any, argv: Sequence[str]) -> str:
    """The config table of `--help`, with the defaults of the method asked for (if valid)."""
    methods = [a.split("=", 1)[1] for a in argv if a.startswith("--method=")]
    # An unknown method is reported when training starts; here C is shown as it is.
    with contextlib.suppress(CpclError):
        C = apply_overrides(C, [f"--method={m}" for m in methods[-1:]])
    return key_help(C)


def _finished(summary: dict[str, Any], rest: Sequence[str]) -> str:
    """Where the snapshots went and the command that evaluates the last one."""
    last = summary.get("last_snapshot")
    lines = [f"snapshots: {summary['snapshot_dir']} (epoch-N.pth: N = 0-based epoch)"]
    if last:
        script = os.path.join(os.path.dirname(sys.argv[0]), "eval.py")
        lines.append("evaluate:  " + shlex.join([sys.executable, script, "-e", last, *rest]))
    return "\n".join(lines)


def main(C: Any, argv: list[str] | None = None) -> int:
    """Command-line entry of `exp_*/train.py`: `[-c CKPT] [--key=value ...]`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description="Train a segmentation method (C.method: "
        + ", ".join(method_names())
        + "). Any config key below can be set with --key=value; values come from config.py. "
        "Snapshots are named epoch-N.pth with N the 0-based epoch (official), plus "
        "epoch-last.pth.",
        epilog="config keys (--key=value; [current value]):\n" + _help_config(C, argv),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "-c", "--continue", dest="resume", metavar="CKPT", help="resume from this checkpoint"
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check the configured run without training: settings table, lists, a sample of "
        "images, weights, output folders, device, ONE iteration and the projected time; exit "
        "0 (ready) or 1 (every problem listed)",
    )
    args, rest = parser.parse_known_args(argv)
    try:
        C = apply_overrides(C, rest)
        if args.dry_run:
            return dry_run(C, root=os.getcwd(), argv=rest)
        summary = fit(C, root=os.getcwd(), resume=args.resume, argv=[sys.argv[0], *argv])
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if summary["interrupted"]:
        print(
            "training interrupted; resume with: -c "
            + os.path.join(summary["snapshot_dir"], "interrupted.pth")
        )
        return EXIT_INTERRUPTED
    print(_finished(summary, rest))
    return 0
