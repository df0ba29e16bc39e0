"""Writes that are either complete or absent: a reader never sees half a file or folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def torch_save_atomic(obj: Any, path: Path) -> None:
    """torch.save into a temporary file beside `path`, then rename it into place."""
    import torch

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_folder(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a sibling temporary folder to fill; on success it becomes `target`.

    `target` may exist only as an empty folder, or as anything when replace=True.
    On error the temporary folder is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            if replace:
                shutil.rmtree(target)
            else:
                target.rmdir()  # only an empty folder may be replaced
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
