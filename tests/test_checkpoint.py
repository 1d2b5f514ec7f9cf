"""Checkpoints: durable atomic writes, the previous one kept and fallen back to, leftovers of a
killed save removed, RNG states and logs.csv brought back to the checkpoint on resume."""
import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch

from torchbeast.core.checkpoint import (
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    remove_temporary_files,
    save_checkpoint,
)
from torchbeast.core.run_outputs import read_log, trim_log
from torchbeast.core.training import rng_states, set_rng_states
from torchbeast.errors import ConfigError


def state(step):
    return dict(model_state_dict={"w": torch.full((2,), float(step))}, model_config={}, step=step, flags={})


def test_the_previous_checkpoint_is_kept(tmp_path):
    path = str(tmp_path / "model.tar")
    save_checkpoint(path, state(1))
    assert not os.path.exists(previous_path(path))
    save_checkpoint(path, state(2))
    save_checkpoint(path, state(3))
    assert previous_path(path) == str(tmp_path / "model.prev.tar")
    assert load_checkpoint(path)["step"] == 3 and load_checkpoint(previous_path(path))["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["model.prev.tar", "model.tar"]  # no temporary file left


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_load_falls_back_to_the_previous_checkpoint(tmp_path, caplog, damage):
    path = str(tmp_path / "model.tar")
    save_checkpoint(path, state(1))
    save_checkpoint(path, state(2))
    if damage == "corrupt":
        with open(path, "r+b") as f:  # as a disk error or a kill between truncation and write would
            f.truncate(100)
    else:
        os.unlink(path)
    with caplog.at_level(logging.WARNING, logger="torchbeast"):
        used, loaded = load_latest_checkpoint(path)
    assert used == previous_path(path) and loaded["step"] == 1
    assert "falling back to the previous checkpoint" in caplog.text


def test_load_latest_without_any_checkpoint_and_with_only_a_bad_one(tmp_path):
    path = str(tmp_path / "model.tar")
    assert load_latest_checkpoint(path) is None
    (tmp_path / "model.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be read"):
        load_latest_checkpoint(path)


class FailsToPickle:
    def __reduce__(self):
        raise pickle.PicklingError("disk full, say")


def test_a_failed_write_leaves_the_checkpoint_and_no_temporary_file(tmp_path):
    path = str(tmp_path / "model.tar")
    save_checkpoint(path, state(1))
    with pytest.raises(pickle.PicklingError):
        save_checkpoint(path, dict(state(2), unpicklable=FailsToPickle()))
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["model.tar"]


def test_leftovers_of_a_killed_save_are_removed(tmp_path):
    for name in (".tmp-abc123.tar", ".tmp-prev-77.tar"):
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "model.tar").write_bytes(b"x")
    assert remove_temporary_files(str(tmp_path)) == 2
    assert os.listdir(tmp_path) == ["model.tar"]


def test_rng_states_survive_a_checkpoint(tmp_path):
    path = str(tmp_path / "model.tar")
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(path, dict(state(1), rng_states=rng_states()))
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_states(load_checkpoint(path)["rng_states"])  # a weights_only load
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_trim_log_cuts_back_to_the_checkpoint_and_drops_a_half_written_row(tmp_path):
    csv_path = tmp_path / "logs.csv"
    csv_path.write_text("step,time,sps\n40,1.0,5\n80,2.0,6\n120,3.0,7\n16")  # killed mid-row
    assert trim_log(str(csv_path), 80) == 2
    assert [r["step"] for r in read_log(str(csv_path))] == ["40", "80"]
    assert csv_path.read_text().endswith("\n")
    assert trim_log(str(csv_path), 80) == 0
    assert trim_log(str(tmp_path / "none.csv"), 0) == 0
