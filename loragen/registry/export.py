"""`loragen export`: an adapter's stored files as a PEFT folder that loads with its base in one offline call."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from loragen import adapters as adapter_io
from loragen.atomic import staged_folder
from loragen.errors import LoragenError

# Written beside an exported adapter: which registered adapter and base version it is.
EXPORT_RECORD = "loragen.json"


def check_export_target(out_dir: Path) -> None:
    """Refuse a folder `export` could not write, before any work that would end in writing it."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            raise LoragenError(f"{out_dir}: already exists and is not empty")
    elif out_dir.exists() or out_dir.is_symlink():
        raise LoragenError(f"{out_dir}: is a file, not a folder (export writes a folder: give a new or empty one)")


def write_export(out_dir: Path, weights: Path, config: Path, record: dict[str, Any], base_folder: Path) -> Path:
    """Write the folder: the weights byte for byte, the stored config with `base_model_name_or_path` set to
    `base_folder` (a path valid on this machine, so written at export, never stored), and EXPORT_RECORD."""
    out_dir = Path(out_dir)
    check_export_target(out_dir)
    with staged_folder(out_dir) as staging:
        shutil.copyfile(weights, staging / adapter_io.WEIGHTS_NAME)
        (staging / adapter_io.CONFIG_NAME).write_text(
            adapter_io.config_with_base(config.read_text(), str(base_folder)))
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir
