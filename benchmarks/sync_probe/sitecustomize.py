"""Count every host sync of a CUDA job by call site: which ones sit in the training step's hot path?

A sitecustomize module, so that torchrun's workers load it at interpreter start. Usage (GPU):

    SYNC_OUT=/tmp/syncs DMT_VERBOSE=1 PYTHONPATH=benchmarks/sync_probe:$PYTHONPATH \\
        dmt train ... --max-steps 150

Every worker (a process with LOCAL_RANK) turns on ``torch.cuda.set_sync_debug_mode("warn")`` and,
at exit, writes ``$SYNC_OUT/sync_rank<r>_<pid>.txt``: the 40 most frequent call sites of a
synchronizing CUDA call, innermost DMT/torchrec frames first, with their counts. A site counted
about once per step is in the hot path; set-up sites count a few. DMT_VERBOSE=1 keeps
dmt.quiet from filtering the warnings this reads. A diagnostic, not a test: results in
benchmarks/results/gpu_h200x1_pipeline/.
"""

import os

if os.environ.get("SYNC_OUT") and os.environ.get("LOCAL_RANK") is not None:
    import collections
    import traceback
    import warnings

    import torch

    counts: collections.Counter = collections.Counter()

    def _site(frame) -> str:
        return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}:{frame.name}"

    def _count(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return
        stack = traceback.extract_stack()[:-1]
        ours = [f for f in stack if any(p in f.filename for p in ("dmt/", "towers/", "torchrec"))]
        counts[" <- ".join(_site(f) for f in reversed(ours[-5:]))] += 1

    def _dump() -> None:
        path = os.path.join(os.environ["SYNC_OUT"], f"sync_rank{os.environ.get('RANK', 'x')}_{os.getpid()}.txt")
        with open(path, "w") as fh:
            fh.writelines(f"{n:6d}  {site}\n" for site, n in counts.most_common(40))

    if torch.cuda.is_available():
        os.makedirs(os.environ["SYNC_OUT"], exist_ok=True)
        warnings.showwarning = _count
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        _exit = os._exit  # dmt's CLI leaves through os._exit, which skips atexit

        def _dump_then_exit(code: int) -> None:
            _dump()
            _exit(code)

        os._exit = _dump_then_exit
