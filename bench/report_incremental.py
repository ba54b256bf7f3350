"""The "Incremental" section of the benchmark report: our incremental and PITR vs the full, and pgBackRest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.incremental import BackRestRun, Workload

if TYPE_CHECKING:
    from bench.report import Report
    from bench.run_bench import Measured

SIZE_TARGET = 0.05  # incremental stored size <= 5% of the full's
TIME_TARGET = 0.10  # incremental time <= 10% of the full's
PITR_TARGET = 1.2  # full restore + replay <= 1.2x the full's restore alone
MB = 2**20


@dataclass
class IncrementalRun:
    workload: Workload | None = None
    stages: list[Measured] = field(default_factory=list)  # capture, replicate, verify, commit
    pitr: Measured | None = None
    source_digest: dict[str, tuple[int, int]] = field(default_factory=dict)
    pitr_digest: dict[str, tuple[int, int]] = field(default_factory=dict)
    digest_seconds: float = 0.0
    backrest_version: str = ""
    backrest_full: BackRestRun | None = None
    backrest_incr: BackRestRun | None = None
    backrest_block_full: BackRestRun | None = None  # repo2: repo-bundle + repo-block (BETA in 2.45)
    backrest_block_incr: BackRestRun | None = None
    backrest_archive_bytes: int = 0
    backrest_skipped: str = ""

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def copy_bytes(self) -> int:
        return int(self.stages[0].result["stored_bytes"]) + int(self.stages[3].result["manifest_bytes"])

    @property
    def mismatched(self) -> list[str]:
        names = sorted(set(self.source_digest) | set(self.pitr_digest))
        return [t for t in names if self.source_digest.get(t) != self.pitr_digest.get(t)]

    @property
    def fidelity_ok(self) -> bool:
        return bool(self.source_digest) and not self.mismatched


def _mb(n: float) -> str:
    return f"{n / MB:,.2f}"


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**NO**"


def render_incremental(inc: IncrementalRun, r: Report) -> list[str]:
    w = inc.workload
    assert w is not None and inc.pitr is not None
    cap, rep, ver, com = inc.stages
    full_s, full_b = r.backup_seconds, r.copy_bytes
    size_ratio, time_ratio = inc.copy_bytes / full_b, inc.seconds / full_s
    pitr_s, base_s = inc.pitr.seconds, r.restore_ours.seconds
    pitr_ratio = pitr_s / base_s
    res = inc.pitr.result
    upd, dele = sum(w.updated.values()), sum(w.deleted.values())
    out = [
        "## Incremental",
        "",
        f"Same run, same database. After our full backup (which started the chain: its export ran in the "
        f"snapshot of a new logical replication slot, `ensure_replica_identity` first, as the DAG does), "
        f"{upd:,} rows were updated ({upd / w.rows_before:.2%} of {w.rows_before:,}) and {dele:,} deleted "
        f"({dele / w.rows_before:.3%}) in {w.transactions} transactions ({w.seconds:.1f} s): in every table "
        "the rows whose hash of the primary key (of the whole row for `communications`, which has none) "
        "falls in 10 of 1000 buckets are updated (`updated_at`, else a text column gets ' (edited)'), and "
        "those in one other bucket deleted, skipping rows another table references (no cascades).",
        "",
        "| | Our full backup | Our incremental | Incremental vs full | Target | Met |",
        "|---|---:|---:|---:|---:|---|",
        f"| stored size per copy (MB) | {_mb(full_b)} | {_mb(inc.copy_bytes)} | {size_ratio:.2%} "
        f"| <= {SIZE_TARGET:.0%} | {_yes(size_ratio <= SIZE_TARGET)} |",
        f"| time, all stages (s) | {full_s:,.1f} | {inc.seconds:,.1f} | {time_ratio:.1%} "
        f"| <= {TIME_TARGET:.0%} | {_yes(time_ratio <= TIME_TARGET)} |",
        "",
        "| Incremental stage | Process | Wall time (s) | Peak RSS (MB) | Notes |",
        "|---|---|---:|---:|---|",
        f"| capture | capture (slot -> primary) | {cap.seconds:,.1f} | {cap.peak_rss_kb / 1024:,.0f} | "
        f"{cap.result['changes']:,} changes in {cap.result['transactions']} transactions, "
        f"{_mb(cap.result['plain_bytes'])} MB JSON lines -> {_mb(cap.result['stored_bytes'])} MB zstd-3 + AES-GCM |",
    ]
    for s in (rep, ver):
        for p in s.parts:
            out.append(f"| {s.name} | {p.name} | {p.seconds:,.1f} | {p.peak_rss_kb / 1024:,.0f} | |")
    out += [
        f"| commit | commit (manifest on 3 targets) | {com.seconds:,.1f} | {com.peak_rss_kb / 1024:,.0f} | |",
        f"| **total** | | **{inc.seconds:,.1f}** | | full backup: {full_s:,.1f} s |",
        "",
        "### Point-in-time restore (from the primary copy, into an empty database)",
        "",
        "| Contender | Wall time (s) | Peak RSS (MB) | vs full restore alone |",
        "|---|---:|---:|---:|",
        f"| `restore_backup(full)` alone (the restore row above) | {base_s:,.1f} | "
        f"{r.restore_ours.peak_rss_kb / 1024:,.0f} | 1.00x |",
        f"| **PITR**: `restore_backup(full)` + `apply_chain(incremental, until=after the changes)` + "
        f"`bump_sequences` | {pitr_s:,.1f} | {inc.pitr.peak_rss_kb / 1024:,.0f} | {pitr_ratio:.2f}x |",
        f"| of which restore_backup / apply_chain / bump_sequences | {res['restore_seconds']:,.1f} / "
        f"{res['apply_seconds']:,.1f} / {res['bump_seconds']:,.1f} | | |",
        "",
        f"Replayed {res['replayed_changes']:,} changes in {res['replayed_transactions']} transactions "
        f"({res['replayed_changes'] / max(res['apply_seconds'], 1e-9):,.0f} changes/s); "
        f"{res['sequences_bumped']} sequences bumped.",
        "",
        "| Target | Measured | Met |",
        "|---|---|---|",
        f"| incremental stored size <= {SIZE_TARGET:.0%} of the full | {size_ratio:.2%} | "
        f"{_yes(size_ratio <= SIZE_TARGET)} |",
        f"| incremental time <= {TIME_TARGET:.0%} of the full | {time_ratio:.1%} "
        f"({inc.seconds:,.1f} s vs {full_s:,.1f} s) | {_yes(time_ratio <= TIME_TARGET)} |",
        f"| PITR restore <= {PITR_TARGET}x the full's restore alone | {pitr_ratio:.2f}x "
        f"({pitr_s:,.1f} s vs {base_s:,.1f} s) | {_yes(pitr_ratio <= PITR_TARGET)} |",
        f"| fidelity: PITR database = source after the changes (per table: row count and sum of row "
        f"hashes) | {len(inc.source_digest) - len(inc.mismatched)}/{len(inc.source_digest)} tables equal "
        f"| {_yes(inc.fidelity_ok)} |",
        "",
    ]
    if inc.mismatched:
        out.append(
            "Tables whose content differs (rows source/PITR): "
            + ", ".join(
                f"`{t}` ({inc.source_digest.get(t, (None,))[0]}/{inc.pitr_digest.get(t, (None,))[0]})"
                for t in inc.mismatched
            )
        )
        out.append("")
    out += _backrest(inc, full_b, full_s, inc.copy_bytes, inc.seconds)
    out += _notes(inc, r)
    return out


def _notes(inc: IncrementalRun, r: Report) -> list[str]:
    cap = inc.stages[0]
    res = inc.pitr.result if inc.pitr else {}
    out = ["### What the incremental numbers say", ""]
    out.append(
        f"- Size: {cap.result['changes']:,} changes are {_mb(cap.result['plain_bytes'])} MB of JSON lines, "
        f"{_mb(cap.result['stored_bytes'])} MB once compressed and encrypted: the incremental stores what "
        "changed (one row image per change), not the pages or files that hold it."
    )
    fixed = inc.seconds - cap.seconds
    if inc.seconds > TIME_TARGET * r.backup_seconds:
        export = r.stages[0]
        rows = export.result["rows"]
        out.append(
            f"- Time: the capture takes {cap.seconds:,.1f} s ({cap.result['changes'] / cap.seconds:,.0f} changes/s, "
            f"process start included) where the export took {export.seconds:,.1f} s for {rows:,} rows "
            f"({rows / export.seconds:,.0f} rows/s): at this change rate the capture alone is "
            f"{cap.seconds / r.backup_seconds:.0%} of the full's time. Replicate, verify and commit add "
            f"{fixed:,.1f} s: each is a new Python process (imports boto3 / google-cloud-storage, talks to the "
            "emulators) and costs about the same whatever the incremental's size."
        )
    if inc.pitr and inc.pitr.seconds > PITR_TARGET * r.restore_ours.seconds:
        out.append(
            f"- PITR: the replay applies {res['replayed_changes']:,} changes at "
            f"{res['replayed_changes'] / max(res['apply_seconds'], 1e-9):,.0f} changes/s: one statement "
            "per change, pipelined (no round trip each), each statement shape composed once; a row of a table "
            "without a primary key is found through its indexed columns and then matched on every column's "
            "text. The full restore underneath is the same as the restore above; the replay is what is added."
        )
    if inc.mismatched:
        out.append(f"- Fidelity: {len(inc.mismatched)} tables differ after PITR: see the table above.")
    return [*out, ""]


def _backrest(inc: IncrementalRun, our_full_b: int, our_full_s: float, our_inc_b: int, our_inc_s: float) -> list[str]:
    out = ["### pgBackRest on the same change", ""]
    if inc.backrest_full is None or inc.backrest_incr is None:
        return [*out, f"Skipped: {inc.backrest_skipped or 'not run'}", ""]
    out += [
        f"{inc.backrest_version}, `--type=full` before the changes and `--type=incr` after, on the same "
        "cluster, into two repositories on local disk (both compress-type=zst level 3, process-max=2, "
        "start-fast; WAL archived to both by `archive-push` from the fulls on): repo1 with the defaults "
        "(file-level incremental: a changed relation segment file is copied whole) and repo2 with "
        "`repo-bundle=y` + `repo-block=y` (block incremental, BETA in 2.45: only changed blocks of a file). "
        "A physical backup copies the whole cluster's files (all databases, indexes, free space), ours "
        "the logical rows of one database, so compare each tool's incr/full ratio rather than the "
        "absolute sizes.",
        "",
        "| | full | incr | incr vs full |",
        "|---|---:|---:|---:|",
    ]
    for name, f, i in (
        ("pgBackRest (repo1, file-level)", inc.backrest_full, inc.backrest_incr),
        ("pgBackRest (repo2, block incremental)", inc.backrest_block_full, inc.backrest_block_incr),
    ):
        if f is None or i is None:
            continue
        out += [
            f"| {name}: stored in repo (MB) | {_mb(f.stored_bytes)} | {_mb(i.stored_bytes)} | "
            f"{i.stored_bytes / f.stored_bytes:.1%} |",
            f"| {name}: files changed since the prior backup, uncompressed (MB) | {_mb(f.delta_bytes)} "
            f"| {_mb(i.delta_bytes)} | "
            f"{i.delta_bytes / max(f.delta_bytes, 1):.1%} |",
            f"| {name}: wall time (s) | {f.seconds:,.1f} | {i.seconds:,.1f} | {i.seconds / f.seconds:.1%} |",
        ]
    out += [
        f"| ours: stored per copy (MB) | {_mb(our_full_b)} | {_mb(our_inc_b)} | {our_inc_b / our_full_b:.2%} |",
        f"| ours: wall time, 3 verified copies (s) | {our_full_s:,.1f} | {our_inc_s:,.1f} | "
        f"{our_inc_s / our_full_s:.1%} |",
        "",
        f"pgBackRest's WAL archive held {_mb(inc.backrest_archive_bytes)} MB per repository at the end (needed "
        "to restore its incr consistently; not counted above). All pgBackRest backups ran before any "
        "restore, so the cluster held only the source database besides `postgres` and the templates.",
        "",
    ]
    return out
