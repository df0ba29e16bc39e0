"""Atomic writes: a failed write leaves neither a partial target nor a temporary folder behind."""

import errno

import pytest

from loragen.atomic import staged_folder


def test_staged_folder_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="crash mid-write"):
        with staged_folder(target) as staging:
            (staging / "half").write_text("x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(target) as staging:
        (staging / "whole").write_text("x")
    assert [p.name for p in target.iterdir()] == ["whole"]


def test_staged_folder_replaces_only_when_asked(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("x")
    with pytest.raises(OSError) as refused:
        with staged_folder(target) as staging:
            (staging / "new").write_text("y")
    assert refused.value.errno == errno.ENOTEMPTY  # a full folder is replaced only when asked
    assert [p.name for p in target.iterdir()] == ["old"]
    with staged_folder(target, replace=True) as staging:
        (staging / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
