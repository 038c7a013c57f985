"""The ``dmt`` command line: one console script, one subcommand per step of the data path.

    dmt gen-data      synthetic Criteo-format rows with planted feature groups
    dmt partition     group sparse features into towers -> plan.json
    dmt train         train flat or DMT models (one process, or emulated hosts via torchrun)
    dmt demo          the main job end to end on generated data
    dmt bench         time flat and DMT training steps side by side
    dmt plan-cluster  predicted step time and speed-up on a cluster you describe

Each subcommand lives in ``dmt/cli/<name>.py`` with ``register(subparsers)``; its handler
returns an exit code. Any DmtError (bad data, plan, topology, arguments) becomes one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from dmt.distributed.launch import JobStopped, watch_parent
from dmt.errors import DmtError
from dmt.quiet import quiet_third_party

# Modules under dmt.cli, in the order `dmt --help` lists them.
COMMANDS = ("gen_data", "preprocess", "partition", "train", "demo", "bench", "plan_cluster")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line with exit code 2 (its default code)."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's NoReturn
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dmt", description="Disaggregated Multi-Tower training on TorchRec.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"dmt.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad arguments (one line printed, 2) or --help (0): an exit code like any other
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv  # lets a command re-launch itself under torchrun with the same arguments
    _end_with_agent()
    try:
        return int(args.func(args) or 0)
    except DmtError as e:
        _report(f"dmt {args.command}: error: {e}")
        return 2
    except FileNotFoundError as e:
        _report(f"dmt {args.command}: error: no such file: {e.filename}")
        return 2
    except JobStopped as e:
        hint = "; a run with checkpoints continues with --resume" if args.command == "train" else ""
        _report(f"dmt {args.command}: {e}: its torchrun agents and ranks were stopped (exit {e.exit_code}){hint}")
        return e.exit_code


_watching = False


def _end_with_agent() -> None:
    """A torchrun worker SIGKILLs itself if its agent vanishes (``kill -9``), instead of running on
    and writing outputs for a job nobody owns (see ``dmt.distributed.launch``). Once per process."""
    global _watching
    if "TORCHELASTIC_RUN_ID" in os.environ and not _watching:
        _watching = True
        watch_parent(lambda: os.kill(os.getpid(), signal.SIGKILL))


def _report(line: str) -> None:
    """Print an input error once: under torchrun every rank reads the same arguments and data and
    fails alike, so only rank 0 speaks (the others still exit 2)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


def exit_job(code: int) -> None:
    """Exit with ``code``; a torchrun worker that succeeded skips the interpreter's teardown.

    Why: gloo's C++ worker threads can still hold work objects whose destruction during
    interpreter finalization aborts the process ("terminate called without an active
    exception", pytorch/pytorch#190489), which torchrun then reports as a failed job although
    every output was written. Seen in about one of ten local runs of the test suite (a 2x2
    checkpoint test, a rank aborting with no Python error). The job writes its files atomically
    and they are in place by now, so only the streams need flushing.
    """
    if code == 0 and "TORCHELASTIC_RUN_ID" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)
