"""Writes that are either complete or absent: a reader never sees half a file or folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from loragen.errors import LoragenError


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


def torch_load_state(path: Path, required: Iterable[str]) -> dict[str, Any]:
    """Read back what `torch_save_atomic` wrote for a resumable run: tensors and plain containers only.

    weights_only=True because unpickling anything else runs code: on a shared home, whoever
    can write a run folder would run it as the next user who resumes. A file that is not
    such a state (planted, damaged, cut short) is refused in one line that names it.
    """
    import pickle

    import torch

    start_over = f"delete it to start the run over (rm {path})"
    try:
        state = torch.load(path, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise LoragenError(f"{path}: refused: this resume state holds Python objects besides tensors and plain "
                               f"data, and loading them could run code; {start_over}") from None
        raise LoragenError(f"{path}: damaged resume state (not a torch file); {start_over}") from None
    except Exception as err:  # noqa: BLE001 - torch reports a damaged file as RuntimeError, EOFError, KeyError, ...
        raise LoragenError(f"{path}: damaged resume state ({type(err).__name__}); {start_over}") from None
    missing = sorted(set(required) - set(state)) if isinstance(state, dict) else sorted(required)
    if missing:
        raise LoragenError(f"{path}: not a loragen resume state (no {', '.join(missing)}); {start_over}")
    return state


@contextmanager
def staged_folder(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a sibling temporary folder to fill; on success it becomes `target`.

    `target` may exist only as an empty folder, or as anything when replace=True.
    On error the temporary folder is removed and `target` is untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as err:  # name the folder the user asked for, not our temporary one beside it
        raise LoragenError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        # mkdtemp makes 0700 folders; the result is the user's, so it gets the mode mkdir would give it.
        os.chmod(staging, 0o777 & ~_umask())
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


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
