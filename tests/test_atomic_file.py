"""Files replaced whole (torchbeast/core/atomic_file.py): the old file stays until the new one is
complete, and a write that fails leaves neither a half file nor a temporary one."""
import json
import os

import pytest

from torchbeast.core.atomic_file import replaced, write_json


@pytest.mark.parametrize("durable", [False, True])
def test_the_new_file_replaces_the_old_only_when_complete(tmp_path, durable):
    path = tmp_path / "logs.csv"
    path.write_text("old\n")
    with replaced(str(path), durable=durable) as f:
        f.write("new\n")
        assert path.read_text() == "old\n"  # not yet
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["logs.csv"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    write_json(str(path), {"a": 1})
    with pytest.raises(ValueError):
        write_json(str(path), {"a": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["meta.json"]


def test_binary_files(tmp_path):
    path = tmp_path / "curve.png"
    with replaced(str(path), "wb") as f:
        f.write(b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG"
