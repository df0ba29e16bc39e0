"""Content-addressed file store: blobs/sha256/<2 hex>/<62 hex>, like ollama and the HF cache.

A file is hashed while it is streamed into a temporary file in the same
filesystem, fsynced, then renamed into place: a reader never sees a partial
blob, and storing the same bytes twice keeps one copy.

The writer holds an exclusive flock on its temporary file until the rename, so
`clean_tmp` (run by gc) can tell a live write from a killed one's leftover: it
removes only temporary files it can lock itself. Which blobs may be deleted is
the registry's business (Registry.gc); this module only knows files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Literal

from loragen.errors import LoragenError

CHUNK = 1 << 20
_HEX62 = re.compile(r"^[0-9a-f]{62}$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_HEX64_FULL = re.compile(r"[0-9a-f]{64}")

BlobState = Literal["ok", "missing", "damaged"]


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"

    def path(self, sha256: str) -> Path:
        if not _HEX64_FULL.fullmatch(sha256):  # a digest read from a damaged or edited database
            raise LoragenError(f"{sha256!r} is not a blob digest: the registry database is damaged")
        return self.objects / sha256[:2] / sha256[2:]

    def holds(self, sha256: str, size: int) -> bool:
        """Whether the blob is in place with its full size (cheap: no re-hash; blobs are never rewritten)."""
        try:
            return self.path(sha256).stat().st_size == size
        except FileNotFoundError:
            return False

    def put_stream(self, stream: BinaryIO, expected_sha256: str | None = None, mismatch: str = "") -> tuple[str, int]:
        """Copy a stream into the store; return (sha256, size).

        Storing bytes that are already there refreshes the blob's mtime, so gc's grace
        period spares it until the caller has registered it. With `expected_sha256`, bytes
        that hash otherwise never take a place in the store: LoragenError(`mismatch`).
        """
        tmp_name = None
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = self._locked_temp_file()
            with os.fdopen(fd, "wb") as out:  # open (and so locked) until the rename
                digest = hashlib.sha256()
                size = 0
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
                sha = digest.hexdigest()
                if expected_sha256 is not None and sha != expected_sha256:
                    raise LoragenError(mismatch or f"the stream's sha256 is {sha}, not {expected_sha256}")
                final = self.path(sha)
                if self.holds(sha, size):
                    os.unlink(tmp_name)
                    _touch(final)
                else:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(tmp_name, 0o444)
                    os.replace(tmp_name, final)
                    _fsync_dir(final.parent)
            return sha, size
        except OSError as err:
            if tmp_name:
                _unlink_quietly(tmp_name)
            raise LoragenError(f"could not write to the blob store at {self.root}: {err.strerror or err}") from None
        except BaseException:
            if tmp_name:
                _unlink_quietly(tmp_name)
            raise

    def put_file(self, path: Path) -> tuple[str, int]:
        with open(path, "rb") as fh:
            return self.put_stream(fh)

    def _locked_temp_file(self) -> tuple[int, str]:
        """A new temporary file, flock'ed, that is still at its name once locked.

        Between mkstemp and flock a cleaner may find the file unlocked and remove it;
        then the lock is on an unlinked file, so take a fresh one.
        """
        while True:
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix="incoming-")
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner is looking at this very file
            try:
                at_name = os.stat(name)
            except FileNotFoundError:
                at_name = None
            mine = os.fstat(fd)
            if at_name is not None and (at_name.st_dev, at_name.st_ino) == (mine.st_dev, mine.st_ino):
                return fd, name
            os.close(fd)

    def verify(self, sha256: str) -> BlobState:
        """Re-hash a stored blob."""
        path = self.path(sha256)
        try:
            actual = file_sha256(path)
        except (FileNotFoundError, IsADirectoryError):
            return "missing"
        return "ok" if actual == sha256 else "damaged"

    def digests(self) -> Iterator[str]:
        """The names of the blob files on disk (anything not named like a blob is not ours and is skipped)."""
        if not self.objects.is_dir():
            return
        for folder in self.objects.iterdir():
            if folder.is_dir() and _HEX2.match(folder.name):
                for entry in folder.iterdir():
                    if _HEX62.match(entry.name):
                        yield folder.name + entry.name

    def modified_at(self, sha256: str) -> float | None:
        """The blob file's mtime (when it was written or last stored again), None if it is not there."""
        try:
            return self.path(sha256).stat().st_mtime
        except FileNotFoundError:
            return None

    def remove(self, sha256: str) -> int:
        """Delete a blob file; return the bytes freed (0 if it was not there)."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return size

    def temp_files(self) -> list[Path]:
        return sorted(self.tmp.iterdir()) if self.tmp.is_dir() else []

    def clean_tmp(self) -> int:
        """Remove temporary files of interrupted writes (no live writer holds their lock); return how many."""
        removed = 0
        for leftover in self.temp_files():
            try:
                fd = os.open(leftover, os.O_RDONLY)
            except OSError:  # gone already, or not ours to open
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live write
                continue
            try:
                os.unlink(leftover)  # while locked: a writer that raced us sees its name gone and starts over
                removed += 1
            except FileNotFoundError:
                pass  # renamed into place by a writer that finished while we opened it
            finally:
                os.close(fd)
        return removed


def media_type(relpath: str) -> str:
    """The media type a blob row records for a file, from its name."""
    if relpath.endswith(".gguf"):
        return "application/vnd.gguf"
    if relpath.endswith(".safetensors"):
        return "application/vnd.safetensors"
    if relpath.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _touch(path: Path) -> None:
    """Refresh a blob's mtime; best effort (someone else's file, or gc removed it meanwhile: the registry re-checks)."""
    try:
        os.utime(path)
    except OSError:
        pass


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
