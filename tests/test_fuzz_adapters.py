"""Fuzzed adapter files: whatever the bytes, ingest answers with one clear line and registers nothing."""

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loragen.adapters import read_adapter_folder, read_safetensors_header
from loragen.errors import InvalidAdapter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _header_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@SETTINGS
@given(blob=st.binary(max_size=512))
def test_random_bytes_are_refused_cleanly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "adapter_model.safetensors"
    path.write_bytes(blob)
    # A file the header check accepts needs an 8-byte length, a JSON object and a consistent tensor entry: never
    # 512 random bytes.
    with pytest.raises(InvalidAdapter) as refused:
        read_safetensors_header(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


@SETTINGS
@given(shape=st.lists(st.integers(min_value=0, max_value=2**40), min_size=0, max_size=4),
       dtype=st.sampled_from(["F32", "F16", "BF16", "I32", "U8", "F64", "bogus"]),
       begin=st.integers(min_value=-10, max_value=2**40), length=st.integers(min_value=0, max_value=4096))
def test_declared_shapes_offsets_and_dtypes_are_checked(tmp_path_factory, shape, dtype, begin, length):
    path = tmp_path_factory.mktemp("fuzz") / "adapter_model.safetensors"
    _header_file(path, {"base_model.model.x.lora_A.weight": {"dtype": dtype, "shape": shape,
                                                             "data_offsets": [begin, begin + length]}},
                 b"\0" * length)
    try:
        tensors = read_safetensors_header(path)
    except InvalidAdapter as err:
        assert "\n" not in str(err)
    else:  # accepted only when the header is consistent with the file
        size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
        count = 1
        for dim in shape:
            count *= dim
        assert begin == 0 and count * size == length and tensors


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncated_real_adapters_never_load(tmp_path_factory, tiny_adapter, cut):
    folder = tmp_path_factory.mktemp("fuzz") / "a"
    shutil.copytree(tiny_adapter, folder)
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: min(cut, len(data) - 1)])
    try:
        read_adapter_folder(folder)
    except InvalidAdapter as err:
        assert "\n" not in str(err)
    else:
        raise AssertionError("a truncated safetensors file passed the checks")


def test_fuzzed_ingest_through_the_cli_registers_nothing(capsys, tiny_base, tiny_adapter, tmp_path, isolated_home):
    """End to end: a sample of corrupt files through `loragen ingest`, each with the outcome its bytes call for
    (read by safetensors itself), then an empty registry."""
    import hashlib
    import random

    import torch
    from safetensors.torch import load

    from tests.helpers import blob_files, run_cli

    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    blobs_before = blob_files(isolated_home)
    original = (tiny_adapter / "adapter_model.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", original[:8])[0]
    rng = random.Random(0)
    outcomes = []
    for trial in range(25):
        folder = tmp_path / f"f{trial}"
        shutil.copytree(tiny_adapter, folder)
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):  # flip bytes in the header (even trials) or anywhere (odd ones)
            data[rng.randrange(len(data) if trial % 2 else min(len(data), 200))] = rng.randrange(256)
        (folder / "adapter_model.safetensors").write_bytes(bytes(data))
        # A changed header is corrupt; with the header intact the flips hit the float data, which is an adapter
        # still as long as every value is finite.
        sound = data[:header_end] == original[:header_end] and all(
            torch.isfinite(tensor).all() for tensor in load(bytes(data)).values())
        result = run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", "fuzz", "--json")
        assert "Traceback" not in result.err
        if sound:
            assert result.code == 0, (trial, result.err)
            registered = result.json()["id"]
            sha = hashlib.sha256(data).hexdigest()
            stored = isolated_home / "blobs" / "sha256" / sha[:2] / sha[2:]
            assert stored.read_bytes() == data  # the bytes given, not a rewrite of them
            assert run_cli(capsys, "rm", registered).code == 0
        else:
            assert result.code == 1 and len(result.err.strip().splitlines()) == 1, (trial, result.err)
        outcomes.append(sound)
    assert 0 < sum(outcomes) < len(outcomes)  # the sample holds both kinds
    assert run_cli(capsys, "list", "--json").json() == []
    run_cli(capsys, "gc", "--grace", "0")
    assert blob_files(isolated_home) == blobs_before
