"""Open a generator checkpoint folder of either kind: raw tokens (format 1) or library coordinates (format 2)."""

from __future__ import annotations

import json
from pathlib import Path

from loragen.errors import LoragenError
from loragen.generator.blend_training import BLEND_FORMAT, BlendCheckpoint
from loragen.generator.training import META_FILE, WEIGHTS_FILE, GeneratorCheckpoint

RAW_FORMAT = "loragen-generator/1"


def load_checkpoint(folder: Path) -> GeneratorCheckpoint | BlendCheckpoint:
    """The checkpoint in `folder`, whichever kind; a folder of another format is refused in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("format") == RAW_FORMAT:
            return GeneratorCheckpoint.load(folder)
        if meta.get("format") != BLEND_FORMAT:
            raise LoragenError(f"{folder}: unknown generator checkpoint format {meta.get('format')!r}; this loragen "
                               f"reads {RAW_FORMAT} and {BLEND_FORMAT}: train a new generator (loragen train)")
        return BlendCheckpoint.from_files(folder, meta, load_file(str(folder / WEIGHTS_FILE)))
    except FileNotFoundError as err:
        raise LoragenError(f"{folder}: not a generator checkpoint ({Path(err.filename).name} missing)") from None
    except (json.JSONDecodeError, SafetensorError, AttributeError) as err:
        raise LoragenError(f"{folder}: damaged generator checkpoint ({err})") from None
