"""Content-addressed file store: blobs/sha256/<2 hex>/<62 hex>, like ollama and the HF cache.

A file is hashed while it is streamed into a temporary file in the same
filesystem, fsynced, then renamed into place: a reader never sees a partial
blob, and storing the same bytes twice keeps one copy.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

from loragen.errors import LoragenError

CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"

    def path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Copy a stream into the store; return (sha256, size)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.is_file() and final.stat().st_size == size:
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, final)
                _fsync_dir(final.parent)
            return sha, size
        except OSError as err:
            _unlink_quietly(tmp_name)
            raise LoragenError(f"could not write to the blob store at {self.root}: {err.strerror or err}") from None
        except BaseException:
            _unlink_quietly(tmp_name)
            raise

    def put_file(self, path: Path) -> tuple[str, int]:
        with open(path, "rb") as fh:
            return self.put_stream(fh)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io

        return self.put_stream(io.BytesIO(data))

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored blob; False if it is missing or its bytes changed."""
        path = self.path(sha256)
        if not path.is_file():
            return False
        return file_sha256(path) == sha256

    def all_digests(self) -> Iterable[str]:
        if not self.objects.is_dir():
            return []
        return (d.name + f.name for d in self.objects.iterdir() if d.is_dir() for f in d.iterdir())

    def remove(self, sha256: str) -> None:
        _unlink_quietly(self.path(sha256))

    def clean_tmp(self) -> int:
        """Remove temporary files left by interrupted writes; return how many."""
        if not self.tmp.is_dir():
            return 0
        removed = 0
        for leftover in self.tmp.iterdir():
            _unlink_quietly(leftover)
            removed += 1
        return removed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
