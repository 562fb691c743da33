"""``python -m sfr_ds.launch TORCHRUN_ARGS``: torchrun, reporting a failed job with the rank's own words.

torchrun ends a job whose rank failed with a traceback of its own (``ChildFailedError``) under the
rank's output; for a user's mistake (a bad record, a config the ranks refuse) that buries the one
line that matters under twenty that do not. This runs torchrun's own ``run`` and exits with the
failed rank's status instead. A rank's own traceback (a bug, not a user's mistake) still shows:
the rank prints it.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the agent's own log lines (closing signals, "failed (exitcode: 1)") say again what the line
    # below says; its warnings and errors about the launch itself still show
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        status = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -9: 137
        print(f"sfr-ds: rank {rank} exited with status {status}; the job stopped", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
