"""A loop of the one-wedding restore as the user gets it (issue 9), on a small local stack: for iterating.

``python -m bench.wedding_restore_loop --weddings 3000 --restores 6`` starts the local stack as
bench/weddings_user_view.py does (its set-up, on ``--weddings``), runs the full backup and one proximity run
(wedding 3 gets its wedding backup), then damages and restores wedding 3 ``--restores`` times through
``emergency_restore`` (wedding-only, latest, dry_run false), printing each run's time (first task start to last
task end), its tasks, the restore's own seconds and the last run's task logs (time and event of each line). The
figures to report come from bench/weddings_user_view.py at 200,000 weddings; this is the quick look.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from bench.weddings_user_view import FULL, PROXIMITY, RESTORE, WeddingUserBench  # noqa: E402


def task_log(b: WeddingUserBench, run_id: str, task: str) -> list[str]:
    """A task's log lines (its last attempt), each as its time and event."""
    root = b.stack.state_dir / "logs" / "airflow" / f"dag_id={RESTORE}" / f"run_id={run_id}" / f"task_id={task}"
    logs = sorted(root.rglob("attempt=*.log"))
    lines = logs[-1].read_text(errors="replace").splitlines() if logs else []
    out = []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        out.append(f"{d.get('timestamp', '')[11:23]} {' '.join(str(d.get('event', '')).split())}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--weddings", type=int, default=3000)
    p.add_argument("--restores", type=int, default=6)
    p.add_argument("--log-lines", type=int, default=40, help="lines of the last restore task's log to print")
    args = p.parse_args(argv)
    bench_args = argparse.Namespace(
        weddings=args.weddings, full=80, due=20, files_per_wedding=5, runs=args.restores, results=None, keep=False
    )
    b = WeddingUserBench(bench_args)
    try:
        b.start()
        b.scheduled(FULL, "full backup")
        b.pg_dump()  # the restores' pg_restore baseline reads it
        b.scheduled(PROXIMITY, "proximity")
        b.only_unpaused(RESTORE)
        b.wedding_restores()
        runs = b.runs["wedding restore (latest)"]
        for m in runs:
            print(f"{m['seconds']:.2f} s run, own {m['event_seconds']}, tasks {m['tasks']}")
        print(f"median run {statistics.median(m['seconds'] for m in runs):.2f} s")
        for task in ("plan", "restore"):
            for line in task_log(b, runs[-1]["run_id"], task)[-args.log_lines :]:
                print(f"    {task}: {line[:200]}")
    finally:
        b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
