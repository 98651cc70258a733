"""Store upkeep: garbage collection and re-verification of every blob.

Both run under the store's lock taken exclusively, so they never race a push: a push holds it
shared from its first blob to its commit, which is how gc can delete every unreferenced blob and
every temp file without a grace period. They work on any blob store: in an OCI registry, gc
deletes (HTTP DELETE) the unreferenced blobs the store's ledger knows, and verify downloads and
re-hashes every blob (see registry/blobs/oci.py).
"""

from __future__ import annotations

import logging
import shutil

from loramux.registry.blobs import BlobStore, StoreLock
from loramux.registry.index import Index
from loramux.registry.manifest import BlobProblem, GcReport, VerifyReport

log = logging.getLogger(__name__)


def collect_garbage(index: Index, blobs: BlobStore, lock: StoreLock) -> GcReport:
    """Blobs no live version references (yanked versions' included) and push leftovers."""
    report = GcReport()
    with lock.exclusive():
        # A deleted version's OCI artifact goes first: it would point at blobs removed below.
        for name, version, digest in index.deleted_artifacts():
            blobs.drop_artifact(digest)
            with index.write() as tx:
                tx.set_oci_digest(name, version, None)
            report.removed_artifacts += 1
        referenced = index.blob_users()
        for hex_ in blobs.all_hex():
            if hex_ in referenced:
                report.kept_blobs += 1
            else:
                report.removed_bytes += blobs.remove(hex_)
                report.removed_blobs += 1
        for path in blobs.temp_files():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            report.removed_temp_files += 1
    index.checkpoint()
    log.info("gc: %s", report)
    return report


def verify_blobs(index: Index, blobs: BlobStore, lock: StoreLock) -> VerifyReport:
    """Re-hash every stored blob and check every referenced one exists.

    A corrupt blob is moved to ``quarantine/`` (kept for inspection): the store then knows it
    lacks those bytes, so the next push of the same file stores them again, over HTTP too, where
    a push skips blobs the server says it has.
    """
    report = VerifyReport()
    users = index.blob_users()
    suspects = []
    for hex_ in sorted(set(blobs.all_hex()) | set(users)):
        stored = blobs.hash_stored(hex_)
        if stored is None:
            if hex_ in users:  # else removed by a concurrent gc, so nothing referenced it
                report.problems.append(BlobProblem(
                    digest=f"sha256:{hex_}", problem="missing", detail="blob is missing",
                    used_by=users[hex_]))
            continue
        actual, size = stored
        report.checked_blobs += 1
        report.checked_bytes += size
        if actual != hex_:
            suspects.append(hex_)
    if suspects:
        with lock.exclusive():  # re-checked under the lock: a push may have rewritten it
            for hex_ in suspects:
                detail = blobs.quarantine_if_corrupt(hex_)
                if detail is not None:
                    report.problems.append(BlobProblem(
                        digest=f"sha256:{hex_}", problem="corrupt", detail=detail,
                        used_by=users.get(hex_, [])))
    for problem in report.problems:
        log.warning("verify: %s %s (%s)", problem.problem, problem.digest, problem.detail)
    return report
