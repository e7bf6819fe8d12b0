import pytest
import safetensors.torch
import torch

from fedelta.client.state import WEIGHTS_FILE, SiteState
from fedelta.common.delta import state_hash


def _params(offset: float) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6.0).reshape(2, 3) + offset, "a.bias": torch.full((3,), offset)}


def test_a_saved_version_loads_back_checked_and_leaves_no_temporary_file(tmp_path):
    state = SiteState(tmp_path)
    params = _params(1.0)
    state.save_version(3, state_hash(params), params)
    loaded = state.load_version()
    assert loaded is not None and (loaded.version, loaded.sha) == (3, state_hash(params))
    assert all(torch.equal(loaded.params[name], value) for name, value in params.items())
    assert state.version_on_disk() == (3, state_hash(params))
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]


def test_a_failed_save_keeps_the_previous_version_whole(tmp_path, monkeypatch):
    state = SiteState(tmp_path)
    old = _params(1.0)
    state.save_version(1, state_hash(old), old)

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as file:
            file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    new = _params(2.0)
    with pytest.raises(OSError, match="disk full"):
        state.save_version(2, state_hash(new), new)
    kept = state.load_version()
    assert kept is not None and kept.version == 1 and torch.equal(kept.params["a.bias"], old["a.bias"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]
