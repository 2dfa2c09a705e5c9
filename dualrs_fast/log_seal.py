"""The seal that binds a log's rows to the arguments recorded beside it.

A seal is ``{"bytes": k, "sha256": h}`` with h the sha256 of a tag, the run's config
(canonical JSON) and the first k bytes of the file. A run updates it after each chunk of
rows it appends (LOG's seal lives in LOG.args.json, a shard's in SHARD.seal.json); a
resume recomputes it. So an args file edited (say alpha 0.5 -> 0.001) or swapped in from
another run, and rows edited, removed or inserted in the sealed part, no longer match: the
log is refused. Bytes after the sealed length were written after the last seal (the run
was killed in between): they are cut off and recomputed.

What it does not do: it is a checksum, not a signature. Whoever can write both files can
compute a matching seal for any rows, so a log is trusted only as far as the storage it
lives on. Rows are also checked one by one on resume (``log_rows``).
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

_TAG = b"dualrs_fast log seal v1\n"


class SealError(ValueError):
    """A file does not match its seal."""


def _canonical(config: dict) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


class Seal:
    """Running digest of (config, the file's bytes so far)."""

    def __init__(self, config: dict):
        self._hash = hashlib.sha256(_TAG + _canonical(config) + b"\n")
        self.length = 0

    def update(self, data: bytes) -> "Seal":
        self._hash.update(data)
        self.length += len(data)
        return self

    def record(self) -> dict:
        return {"bytes": self.length, "sha256": self._hash.hexdigest()}


def sealed_length(data: bytes, config: dict, *records: Optional[dict]) -> Seal:
    """The seal of the prefix of ``data`` that the first matching record describes.
    Raises SealError when none matches."""
    for record in records:
        if not isinstance(record, dict):
            continue
        length, digest = record.get("bytes"), record.get("sha256")
        if isinstance(length, bool) or not isinstance(length, int) or not isinstance(digest, str):
            continue
        if 0 <= length <= len(data):
            seal = Seal(config).update(data[:length])
            if seal.record()["sha256"] == digest:
                return seal
    raise SealError("its content does not match its seal")
