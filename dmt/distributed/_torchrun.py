"""torchrun for ``dmt.distributed.launch``: the same agent, without its traceback when a worker fails.

A worker that fails on bad input (a missing file, a malformed row, a plan that does not fit)
already printed one line naming the problem and exited 2. torchrun's own ``main`` then raises
``ChildFailedError``, whose uncaught traceback and failure table would bury that line; this
wrapper exits with the worker's code instead. Any other failure of torchrun itself keeps its
traceback.

Started by ``dmt.distributed.launch.launch_local`` (``DMT_WATCH_PARENT`` set), the agent also ends
with its launcher: when the launcher is gone (even by ``kill -9``), the agent sends itself SIGTERM,
which torchrun turns into an orderly stop of its ranks; a stop by signal exits 128 + the signal
number without torchrun's traceback (the launcher says why the job stopped).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
from torch.distributed.run import main

from dmt.distributed.launch import WATCH_PARENT_ENV, watch_parent

# Agent log lines that explain nothing new to a user:
# "(exitcode: 2)": 2 is dmt's bad-input exit, whose one-line reason rank 0 printed.
# "failed to shutdown the rendezvous", "failed to send a keep-alive heartbeat": emulated host 0's
# agent hosts the rendezvous store and exits first when its ranks fail, so the other agents can no
# longer reach it; harmless once the job is over.
# "closing signal": an agent stopping its own ranks after the job failed elsewhere.
_KNOWN_NOISE = (
    "(exitcode: 2)",
    "failed to shutdown the rendezvous",
    "failed to send a keep-alive heartbeat",
    "closing signal",
)


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _KNOWN_NOISE)


def run(argv: list[str]) -> int:
    for name in (
        "torch.distributed.elastic.multiprocessing.api",
        "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
        "torch.distributed.elastic.agent.server.api",
    ):
        logging.getLogger(name).addFilter(_DropKnownNoise())
    if os.environ.get(WATCH_PARENT_ENV):
        # The launcher is gone: stop as if it had sent SIGTERM (torchrun stops the ranks, then returns).
        watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        main(argv)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1  # a signal (negative) is a failure too
    except SignalException as e:
        return 128 + int(e.sigval)
    except RendezvousConnectionError:
        # Host 0's agent, which holds the rendezvous store, is gone: the job ended there (a rank of
        # it failed, and that agent reports why) while this agent's ranks were still running.
        # Seen in 2 of 24 bad-input runs of `--hosts 2`, 8 at a time on 2 cores.
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
