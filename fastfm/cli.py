"""What every script does with an error: one place for the exit statuses and the ``error:`` line.

    sys.exit(run_script(main))

* an error the user can act on (:func:`user_errors`: a bad option or config, data, a run folder,
  a checkpoint, a missing backend, a diverged run) prints ``error: <message>`` and exits 2;
* a frozen or lost rank (:class:`~fastfm.distributed.RankFailure`) prints ``error: ...`` and exits 1;
* a run stopped by SIGTERM/SIGINT after saving exits 128 + the signal (143, 130);
* Ctrl-C anywhere else exits 130 with one line;
* anything else is a bug and keeps its traceback.

The error types are imported when an error happens, not before: ``prepare_data.py`` must not pay for
importing torch to be able to report a missing file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the input was wrong" (exit 2), from every layer."""
    from .config import ConfigError
    from .data.idx import DataError
    from .files import OutputPathError

    errors: list[type[BaseException]] = [ConfigError, DataError, OutputPathError]
    if sys.modules.get("torch") is not None:     # the others live in modules that need torch
        from .augment import BackendUnavailable
        from .distributed import DeviceError
        from .engine.checkpoint import CheckpointError
        from .engine.folder import RunFolderError
        from .engine.step import NonFiniteLoss

        errors += [BackendUnavailable, DeviceError, NonFiniteLoss, CheckpointError, RunFolderError]
    return tuple(errors)


def error_line(e: BaseException) -> str:
    """``error: <message>``; under torchrun every rank reports, so the rank is named (one node may
    lack the data while the others have it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"error: rank {os.environ.get('RANK', '?')}: {e}"
    return f"error: {e}"


def run_script(main: Callable[[], int | None],
               interrupted: str = "interrupted: stopped at once, without saving") -> int:
    """Run a script's ``main()`` and turn its errors into one line and an exit status (see above);
    ``interrupted``: the line a Ctrl-C prints (a benchmark says where its finished rows are)."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, user_errors()):
            print(error_line(e), file=sys.stderr)
            return 2
        if sys.modules.get("torch") is not None:
            from .distributed import RankFailure
            from .engine.signals import Interrupted

            if isinstance(e, RankFailure):
                print(error_line(e), file=sys.stderr)
                return 1
            if isinstance(e, Interrupted):
                print(f"{e}; rerun with --resume (or --train.resume auto) to continue", file=sys.stderr)
                return e.exit_code
        raise
