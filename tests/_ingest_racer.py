"""An ingest process for the concurrent-ingest tests: `recsys-spark ingest` itself, held at a
barrier just before its first table commit, so that several of them commit at the same moment.

    python -m tests._ingest_racer ROOT RAW BARRIER PARTIES [die-after-N | late]

Every racer reads the tables, validates its files and computes its first commit, then touches
``BARRIER/ready-<pid>`` and waits until PARTIES racers are ready: all of them have then computed
their commits from the same table versions, which is the race. With ``die-after-N`` the process
SIGKILLs itself right after its N-th table commit (nothing can be cleaned up after SIGKILL); a
``late`` racer waits 3 s once released, so that the others commit first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

_BARRIER_TIMEOUT_S = 240.0


def _wait_for_all(barrier: Path, parties: int) -> None:
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + _BARRIER_TIMEOUT_S
    while len(list(barrier.glob("ready-*"))) < parties:
        if time.monotonic() > deadline:
            raise SystemExit(f"racer {os.getpid()}: the other racers never got ready")
        time.sleep(0.05)
    print("released", flush=True)


def main(root: str, raw: str, barrier: str, parties: int, kill: str | None) -> int:
    from recsys_spark.cli import main as cli_main
    from recsys_spark.storage import store as storage

    write = storage.TableStore.write
    released = False
    commits = 0
    die_after = int(kill.rsplit("-", 1)[1]) if kill and kill.startswith("die-after-") else None

    def held(self: storage.TableStore, *args: Any, **kwargs: Any) -> storage.WriteResult:
        nonlocal released, commits
        table = args[1] if len(args) > 1 else kwargs.get("table")
        if table == "runs":  # the manifest, written after the ingest itself
            return write(self, *args, **kwargs)
        if not released:
            _wait_for_all(Path(barrier), parties)
            released = True
            if kill == "late":  # let the other racers commit first
                time.sleep(3.0)
        result = write(self, *args, **kwargs)
        commits += 1
        print(f"committed {result.table} v{result.version}", flush=True)
        if commits == die_after:
            print("dying", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    storage.TableStore.write = held  # type: ignore[method-assign]
    sets = [
        "spark.master=local[1]",
        "spark.ui_enabled=false",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=1g",
        f"storage.root={root}",
        f"spark.checkpoint_dir={root}-checkpoints-{os.getpid()}",
        f"ingest.source.path={raw}",
        "ingest.source.preset=synthetic",
    ]
    return cli_main([a for s in sets for a in ("--set", s)] + ["ingest"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None))
