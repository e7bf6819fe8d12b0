import pytest
import safetensors.torch
import torch

from fedelta.client.state import WEIGHTS_FILE, SiteState
from fedelta.common.delta import Delta, Dense, apply_delta, state_hash
from fedelta.common.versions import Downlink, encode_merged


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


def _moved(params: dict[str, torch.Tensor], base_version: int, steps: int) -> tuple[Downlink, dict[str, torch.Tensor]]:
    """A downlink of ``steps`` merged blobs from ``params`` (at ``base_version``), and the weights it leads to."""
    current = {name: value.clone() for name, value in params.items()}
    base_sha = state_hash(current)
    blobs, versions, shas = [], [], []
    for step in range(steps):
        change = torch.zeros(current["a.weight"].shape)
        change[step % change.shape[0]] = 0.25 * (step + 1)  # one row: a blob far smaller than the weights
        delta = Delta({"a.weight": Dense(change)})
        blobs.append(encode_merged(delta, base=shas[-1] if shas else base_sha))
        apply_delta(current, delta)
        versions.append(base_version + step + 1)
        shas.append(state_hash(current))
    return Downlink(base_version, base_sha, blobs, versions, shas), current


def _large_params() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(64 * 256, dtype=torch.float32).reshape(256, 64), "a.bias": torch.ones(64)}


def _journal_names(root) -> list[str]:
    return sorted(path.name for path in root.iterdir() if path.name.startswith("merged-"))


def test_a_journalling_site_keeps_the_downlinks_blobs_and_loads_their_version_checked(tmp_path):
    state = SiteState(tmp_path, journal=True)
    params = _large_params()
    state.save_version(1, state_hash(params), params)
    downlink, moved = _moved(params, 1, 2)
    state.advance(downlink, moved)

    assert _journal_names(tmp_path) == [f"merged-{v:012d}-{sha}.fdz" for v, sha in zip([2, 3], downlink.shas)]
    assert [path.read_bytes() for path in sorted(tmp_path.glob("merged-*"))] == downlink.blobs
    assert state.version_on_disk() == (3, downlink.target_sha)
    with safetensors.safe_open(str(tmp_path / WEIGHTS_FILE), framework="pt") as handle:
        assert handle.metadata()["version"] == "1"  # the weights file was not written again
    loaded = state.load_version()
    assert (loaded.version, loaded.sha) == (3, downlink.target_sha)
    assert all(torch.equal(loaded.params[name], value) for name, value in moved.items())


def test_the_journal_gives_way_to_whole_weights_once_it_would_outgrow_them(tmp_path):
    state = SiteState(tmp_path, journal=True)
    params = _large_params()
    state.save_version(1, state_hash(params), params)
    weights_bytes = (tmp_path / WEIGHTS_FILE).stat().st_size
    downlink, moved = _moved(params, 1, 1)
    state.advance(downlink, moved)
    version, held = 2, moved
    while _journal_names(tmp_path):
        written = sum(path.stat().st_size for path in tmp_path.glob("merged-*"))
        downlink, held = _moved(held, version, 1)
        version += 1
        grows_past = written + downlink.size() > weights_bytes
        state.advance(downlink, held)
        assert bool(_journal_names(tmp_path)) != grows_past
        assert state.version_on_disk() == (version, downlink.target_sha)
    assert sorted(path.name for path in tmp_path.iterdir()) == [WEIGHTS_FILE]
    loaded = state.load_version()
    assert loaded.version == version and all(torch.equal(loaded.params[n], v) for n, v in held.items())


def test_without_the_journal_or_off_the_cached_base_the_weights_are_written_whole(tmp_path):
    params = _large_params()
    plain = SiteState(tmp_path / "plain")
    plain.save_version(1, state_hash(params), params)
    downlink, moved = _moved(params, 1, 1)
    plain.advance(downlink, moved)
    assert sorted(path.name for path in plain.root.iterdir()) == [WEIGHTS_FILE]
    assert plain.load_version().version == 2

    elsewhere = SiteState(tmp_path / "elsewhere", journal=True)
    elsewhere.save_version(5, state_hash(params), params)  # not the downlink's base
    elsewhere.advance(downlink, moved)
    assert sorted(path.name for path in elsewhere.root.iterdir()) == [WEIGHTS_FILE]
    assert elsewhere.version_on_disk() == (2, downlink.target_sha)


def test_a_damaged_journal_loses_the_cache_and_a_missing_entry_ends_the_chain_before_it(tmp_path):
    params = _large_params()
    state = SiteState(tmp_path, journal=True)
    state.save_version(1, state_hash(params), params)
    downlink, _ = _moved(params, 1, 3)
    state.advance(downlink, _)
    entries = sorted(tmp_path.glob("merged-*"))

    entries[1].unlink()
    assert state.version_on_disk() == (2, downlink.shas[0])
    loaded = state.load_version()
    assert (loaded.version, loaded.sha) == (2, downlink.shas[0])

    data = bytearray(entries[0].read_bytes())
    data[-1] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    assert state.load_version() is None
