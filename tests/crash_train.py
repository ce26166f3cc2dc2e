"""``python tests/crash_train.py ARGS...``: ``scripts/train.py ARGS...``, killed around a checkpoint write.

The command line is the real one (run through ``runpy``); only ``os.replace``, the rename that
publishes every atomic write, is wrapped.  Environment:

* ``CRASH_LOG=FILE``: append the name of every ``.pt`` file published, one per line.
* ``CRASH_AT=N``: die (``os._exit(137)``, as after SIGKILL: no handler, no cleanup) at the N-th
  ``.pt`` write (1-based); ``CRASH_WHEN=after`` (default) just after its rename, ``before`` just
  before it, which leaves the temporary file behind as a kill in the middle of a write does.
"""

import os
import runpy
import sys

_log = os.environ.get("CRASH_LOG")
_at = int(os.environ.get("CRASH_AT", "0"))
_before = os.environ.get("CRASH_WHEN", "after") == "before"
_replace = os.replace
_count = 0


def _crashing_replace(src, dst, *args, **kwargs):
    global _count
    if not str(dst).endswith(".pt"):
        return _replace(src, dst, *args, **kwargs)
    _count += 1
    if _log:
        with open(_log, "a") as f:
            f.write(os.path.basename(str(dst)) + "\n")
    if _count == _at and _before:
        os._exit(137)
    result = _replace(src, dst, *args, **kwargs)
    if _count == _at:
        os._exit(137)
    return result


os.replace = _crashing_replace
sys.argv = ["scripts/train.py", *sys.argv[1:]]
runpy.run_path("scripts/train.py", run_name="__main__")
