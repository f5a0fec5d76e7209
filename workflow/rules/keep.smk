# Expensive outputs survive a failed run. Their rules flag them update(): Snakemake then keeps the
# file while the job runs and copies it back when the job fails. It does not put back the file's
# provenance, though: it records the failed job's params for the restored file (so the old model
# would count as made by the new config) and the copy gets a new mtime (so everything downstream
# would rerun). The hooks below snapshot the provenance and mtime of every such file a job of this
# run may replace, before any job starts, and put both back after a failed run, so the old file
# means exactly what it meant. An interrupted run (Ctrl-C, SIGTERM) is not restored by Snakemake
# at all: the file was never replaced (the stages write atomically) but stays marked incomplete,
# so the next run would redo the job even with the config put back; the marker is lifted from
# every such file that is still exactly the one snapshotted.
import os

from snakemake.io import is_flagged

SUMMARY = f"{RES}/summary.csv"
STALE_SUMMARY = f"{RES}/summary.stale.csv"
_kept = {}


def _stamp(path):
    """What says a file is still the one snapshotted (the stages replace files by renaming)."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


def checkpoints_cut_short(jobs):
    """Checkpoints that jobs about to run read but that are cut short (a full disk, a copy that
    stopped): a torch checkpoint is a zip whose directory sits at its end, so this costs no loading."""
    import zipfile

    inputs = {str(f) for job in jobs for f in job.input if str(f).endswith(".pt") and os.path.exists(f)}
    return sorted(p for p in inputs if not zipfile.is_zipfile(p))


onstart:
    jobs = list(workflow.dag.needrun_jobs())
    bad = checkpoints_cut_short(jobs)
    if bad:   # before any job runs, so no output of the jobs that read it is deleted
        sys.exit(f"error: {bad[0]} is truncated or not a checkpoint (no zip directory at its end); delete it "
                 f"and run again to make it anew (never --touch it)")
    for path in {str(f) for job in jobs for f in job.output if is_flagged(f, "update") and os.path.exists(f)}:
        _kept[path] = (workflow.persistence._read_record(path), _stamp(path))
    # A summary about to be rebuilt describes models this run replaces: until the new one is
    # written it is only the stale one, under a name that says so (a failed run leaves it so).
    if os.path.exists(SUMMARY) and any(job.rule.name == "summarize" for job in jobs):
        os.replace(SUMMARY, STALE_SUMMARY)
        print(f"{SUMMARY} is out of date for this run: kept as {STALE_SUMMARY} until the new one is written",
              file=sys.stderr)


onsuccess:
    if os.path.exists(SUMMARY) and os.path.exists(STALE_SUMMARY):
        os.remove(STALE_SUMMARY)


onerror:
    # Snakemake logs each file it copied back: only those lost their provenance (a job that
    # succeeded before the failure replaced its file and recorded it rightly).
    text = "".join(Path(f).read_text() for f in (log if isinstance(log, list) else [log]) if f and Path(f).is_file())
    restored = set(re.findall(r"Restored previous version of (\S+) \(updating job failed\)", text))
    for path in sorted(restored & set(_kept)):
        record, (mtime_ns, _) = _kept[path]
        if record is None:
            workflow.persistence._delete_record(path)
        else:
            workflow.persistence._write_record(path, record)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        print(f"kept {path} as it was before this run: its job failed", file=sys.stderr)
    untouched = [p for p, (_, stamp) in _kept.items()
                 if p not in restored and os.path.exists(p) and _stamp(p) == stamp]
    for path in sorted(workflow.persistence._filter_incomplete_keys(untouched)):
        workflow.persistence._unmark_incomplete(path)
        print(f"kept {path} as it was before this run: its job was interrupted", file=sys.stderr)
