import json

import numpy as np
import pytest
import safetensors.torch
import torch
import zstandard

from fedelta.common import codec
from fedelta.common.codec import (
    EARLIER_FORMATS, FORMAT, CodecError, Limits, decode, decode_index_gaps, encode, encode_and_apply, encode_index_gaps,
)
from fedelta.common.delta import Delta, Dense, SeededMask, Sparse, apply_delta, seeded_mask
from fedelta.common.entries import seeded_positions
from fedelta.common.pruning import PruneRequest, prune_delta

LIMITS = Limits(max_bytes=1 << 20, max_elements=100_000)
BASE = "ab" * 32


def _delta() -> Delta:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 30, generator=gen)
    positions = seeded_mask(11, "w.seeded", weight.numel(), 0.2).nonzero().reshape(-1)
    return Delta({
        "w.dense": Dense(torch.randn(3, 4, generator=gen)),
        "w.sparse": Sparse((40, 30), torch.tensor([0, 1, 7, 500, 1199]), torch.randn(5, generator=gen)),
        "w.seeded": SeededMask((40, 30), "w.seeded", 11, 0.2, weight.reshape(-1)[positions], positions),
        "w.empty": Sparse((10,), torch.zeros(0, dtype=torch.int64), torch.zeros(0)),
    })


def test_a_decoded_seeded_entry_draws_its_positions_on_use_unless_a_known_entry_lends_them(monkeypatch):
    from fedelta.common import entries

    delta = _delta()
    data = encode(delta, base=BASE)
    seeded = delta.entries["w.seeded"]
    drawn = []
    monkeypatch.setattr(entries, "seeded_positions", lambda *args: drawn.append(args) or seeded_positions(*args))
    lent = decode(data, LIMITS, known=delta.entries).delta.entries["w.seeded"]
    assert lent.positions() is seeded.positions()
    other = {"w.seeded": SeededMask((40, 30), "w.seeded", 12, 0.2, seeded.values, seeded.positions())}
    decoded = [decode(data, LIMITS, known=known).delta.entries["w.seeded"]
               for known in (other, {"w.seeded": delta.entries["w.sparse"]}, {})]
    assert drawn == []  # decoding alone (as the server's validation does) draws no positions
    for got in decoded:
        assert torch.equal(got.positions(), seeded.positions()) and torch.equal(got.values, lent.values)
    assert len(drawn) == 3 and drawn[0][:2] == (11, "w.seeded")


@pytest.mark.parametrize("values", ["fp32", "fp16", "bf16"])
def test_round_trip_every_entry_kind(values):
    delta = _delta()
    decoded = decode(encode(delta, base=BASE, values=values, meta={"method": "full"}), LIMITS)
    assert decoded.base == BASE and decoded.meta["method"] == "full" and decoded.meta["values"] == values
    assert decoded.delta.names() == delta.names()
    for name, entry in delta.entries.items():
        got = decoded.delta.entries[name]
        assert type(got) is type(entry) and got.shape == entry.shape
        cast = entry.flat_values().to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[values])
        assert torch.equal(got.flat_values().reshape(-1), cast.reshape(-1))
        if entry.positions() is not None:
            assert torch.equal(got.positions(), entry.positions())


@pytest.mark.parametrize("values", ["fp32", "fp16", "bf16", "int8", "ternary"])
def test_empty_delta_round_trips_for_every_value_type(values):
    decoded = decode(encode(Delta({}), base=BASE, values=values), LIMITS)
    assert decoded.delta.names() == [] and decoded.base == BASE and decoded.meta["values"] == values


def test_round_trip_of_pruned_values_is_exact():
    dense = {"layer.weight": torch.randn(64, 64), "layer.bias": torch.randn(64)}
    for pruner in ("none", "dare", "magnitude"):
        delta = prune_delta(dense, pruner, PruneRequest(keep=0.1, seed=5), min_size=100)
        decoded = decode(encode(delta, base=BASE), LIMITS).delta
        for name in dense:
            assert torch.equal(decoded.entries[name].to_dense(), delta.entries[name].to_dense())


def test_a_dense_entry_with_zeros_travels_as_indices_only_when_that_is_smaller():
    gen = torch.Generator().manual_seed(3)
    mostly_zero = torch.randn(4000, generator=gen) * (torch.rand(4000, generator=gen) < 0.3)
    mostly_zero[7] = -0.0
    full = torch.randn(4000, generator=gen)
    delta = Delta({"z": Dense(mostly_zero), "f": Dense(full)})
    payload = encode(delta, base=BASE, values="fp32")
    decoded = decode(payload, LIMITS).delta
    assert isinstance(decoded.entries["z"], Sparse) and isinstance(decoded.entries["f"], Dense)
    for name, entry in delta.entries.items():
        got = decoded.entries[name].to_dense()
        assert torch.equal(got.view(torch.int32), entry.values.view(torch.int32))  # bit for bit, -0.0 included
    as_dense = encode(Delta({"z": Dense(mostly_zero)}), base=BASE, values="ternary")
    assert isinstance(decode(as_dense, LIMITS).delta.entries["z"], Dense)  # a scaled type's scale needs every value


def test_seeded_mask_sends_no_indices():
    dense = {"w": torch.randn(200, 200)}
    seeded = prune_delta(dense, "dare", PruneRequest(keep=0.05, seed=1))
    explicit = prune_delta(dense, "magnitude", PruneRequest(keep=0.05, seed=1))
    tensors = safetensors.torch.load(zstandard.ZstdDecompressor().decompress(encode(seeded, base=BASE)))
    assert set(tensors) == {"w/values"}
    assert len(encode(seeded, base=BASE)) < len(encode(explicit, base=BASE))


@pytest.mark.parametrize("indices", [[0], [5], [0, 1, 2, 3], [3, 200, 70_000, 2**33], list(range(0, 100_000, 7))])
def test_index_gaps_round_trip(indices):
    array = np.array(indices, dtype=np.int64)
    coded = encode_index_gaps(array)
    assert np.array_equal(decode_index_gaps(coded, len(indices), 2**34), array)


def test_index_gaps_reject_bad_input():
    with pytest.raises(ValueError):
        encode_index_gaps(np.array([3, 3]))
    coded = encode_index_gaps(np.array([1, 5, 9]))
    with pytest.raises(CodecError, match="expected 2"):
        decode_index_gaps(coded, 2, 100)
    with pytest.raises(CodecError, match="out of range"):
        decode_index_gaps(coded, 3, 9)


def test_truncated_bytes_are_rejected():
    data = encode(_delta(), base=BASE)
    for cut in (0, 4, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError):
            decode(data[:cut], LIMITS)


def test_flipped_byte_is_rejected_by_checksum_or_structure():
    data = bytearray(encode(_delta(), base=BASE))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(CodecError):
        decode(bytes(data), LIMITS)


def test_declared_size_over_limit_is_refused_before_decompressing():
    data = encode(Delta({"w": Dense(torch.ones(100_000))}), base=BASE)
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(data, Limits(max_bytes=50_000, max_elements=1_000_000))


def test_element_count_over_limit_is_refused():
    data = encode(_delta(), base=BASE)
    with pytest.raises(CodecError, match="more than"):
        decode(data, Limits(max_bytes=1 << 20, max_elements=100))


def _container(meta: dict, tensors: dict) -> bytes:
    raw = safetensors.torch.save(tensors, metadata=meta)
    return zstandard.ZstdCompressor(write_checksum=True).compress(raw)


@pytest.mark.parametrize("earlier", EARLIER_FORMATS)
def test_earlier_formats_are_read_except_their_seeded_masks(earlier):
    dense = {"format": earlier, "base": BASE, "values": "fp32",
             "entries": json.dumps({"x": {"kind": "dense", "shape": [4]}})}
    decoded = decode(_container(dense, {"x/values": torch.arange(4.0)}), LIMITS)
    assert torch.equal(decoded.delta.entries["x"].to_dense(), torch.arange(4.0))
    seeded = {**dense, "entries": json.dumps({"x": {"kind": "seeded", "shape": [400], "seed": 1, "keep": 0.5}})}
    with pytest.raises(CodecError, match=f"seeded entry of {earlier}.*must update fedelta"):
        decode(_container(seeded, {"x/values": torch.zeros(200)}), LIMITS)


@pytest.mark.parametrize(
    ("meta", "tensors", "fragment"),
    [
        ({"format": "other"}, {"x/values": torch.zeros(1)}, "not a fedelta"),
        ({"format": FORMAT, "base": BASE, "values": "fp64", "entries": "{}"}, {}, "bad metadata"),
        ({"format": FORMAT, "base": BASE, "values": "fp32",
          "entries": json.dumps({"x": {"kind": "dense", "shape": [4]}})}, {"x/values": torch.zeros(3)}, "3 values"),
        ({"format": FORMAT, "base": BASE, "values": "fp32",
          "entries": json.dumps({"x": {"kind": "magic", "shape": [4]}})}, {"x/values": torch.zeros(4)}, "unknown kind"),
        ({"format": FORMAT, "base": BASE, "values": "fp32",
          "entries": json.dumps({"x": {"kind": "dense", "shape": [-4]}})}, {"x/values": torch.zeros(4)}, "bad shape"),
        ({"format": FORMAT, "base": BASE, "values": "fp32",
          "entries": json.dumps({"x": {"kind": "dense", "shape": [4]}})}, {"y/values": torch.zeros(4)}, "do not match"),
        ({"format": FORMAT, "base": BASE, "values": "fp32",
          "entries": json.dumps({"x": {"kind": "seeded", "shape": [400], "seed": 1, "keep": 0.5}})},
         {"x/values": torch.zeros(3)}, "for a mask"),
    ],
)
def test_malformed_containers_name_the_problem(meta, tensors, fragment):
    with pytest.raises(CodecError, match=fragment):
        decode(_container(meta, tensors), LIMITS)


def test_reserved_metadata_keys_are_refused():
    with pytest.raises(ValueError, match="reserved"):
        encode(_delta(), base=BASE, meta={"base": "x"})


@pytest.mark.parametrize("density", [0.5, 0.3, 0.01, 0.0005])  # Rice spends >= 1 bit per index
def test_rice_coded_indices_round_trip_near_the_information_bound(density):
    import math

    rng = np.random.default_rng(int(density * 1e4))
    numel = 200_000
    indices = np.flatnonzero(rng.random(numel) < density)
    coded = encode_index_gaps(indices)
    assert np.array_equal(decode_index_gaps(coded, indices.size, numel), indices)
    bound_bits = (math.lgamma(numel + 1) - math.lgamma(indices.size + 1) - math.lgamma(numel - indices.size + 1)) / math.log(2)
    assert coded.size * 8 <= 1.05 * bound_bits + 16


@pytest.mark.parametrize("chunk", [1, 7, 64])  # fields and quotients straddle byte boundaries between chunks
def test_rice_coding_in_chunks_writes_the_same_bytes(chunk, monkeypatch):
    from fedelta.common import rice

    rng = np.random.default_rng(chunk)
    indices = np.flatnonzero(rng.random(5_000) < 0.2)
    whole = encode_index_gaps(indices)
    monkeypatch.setattr(rice, "CHUNK", chunk)
    cost = rice.RiceCost()
    for start in range(0, indices.size, 3 * chunk):
        cost.add(indices[start : start + 3 * chunk])
    writer = rice.RiceWriter(cost.parameter())
    for start in range(0, indices.size, 5 * chunk):
        writer.add(indices[start : start + 5 * chunk])
    assert np.array_equal(writer.finish(), whole) and cost.size() == whole.size
    assert np.array_equal(decode_index_gaps(whole, indices.size, 5_000), indices)


@pytest.mark.parametrize("numel, density", [
    (1, 1.0), (63, 0.5), (64, 0.3), (1_000, 0.0), (4_097, 1.0), (5_003, 0.2), (70_001, 0.001),
    (300_000, 0.00002),  # gaps past the small-gap table and a Rice parameter of 15
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rice_coding_a_tensors_kept_positions_in_place_writes_the_bytes_of_their_index_list(numel, density, dtype):
    from fedelta.common import rice

    generator = torch.Generator().manual_seed(numel)
    values = torch.randn(numel, generator=generator).to(dtype)
    values[torch.rand(numel, generator=generator) >= density] = 0.0
    values[numel // 2] = -0.0  # kept: its bits are not all zero
    bits = values.view(codec.SAME_WIDTH_INTEGER[dtype]).numpy()
    positions = np.flatnonzero(bits != 0)
    expected = encode_index_gaps(positions)

    cost, words = rice.RiceCost.of_nonzero(bits)
    assert (cost.count, cost.size(), cost.parameter()) == (positions.size, expected.size, int(expected[0]))
    assert np.array_equal(rice.encode_nonzero(words, cost), expected)

    if dtype == torch.float32:
        target = torch.randn(numel, generator=generator)
        expected_target = target.clone().index_add_(0, torch.from_numpy(positions), values[positions])
        kept = values[positions].clone()
        assert np.array_equal(rice.encode_nonzero(words, cost, values.numpy(), target.numpy()), expected)
        assert torch.equal(values[: positions.size].view(torch.int32), kept.view(torch.int32))
        assert torch.equal(target.view(torch.int32), expected_target.view(torch.int32))


@pytest.mark.parametrize("mutate", [
    lambda c: c[:-1],                                       # a byte short
    lambda c: np.concatenate([c, np.zeros(1, np.uint8)]),   # a byte of padding too many
    lambda c: np.concatenate([[60], c[1:]]).astype(np.uint8),  # Rice parameter out of range
])
def test_rice_decoding_rejects_malformed_lengths(mutate):
    coded = encode_index_gaps(np.array([3, 40, 41, 977]))
    with pytest.raises(CodecError):
        decode_index_gaps(mutate(coded), 4, 1000)


def test_a_count_the_coding_cannot_hold_is_refused_before_anything_is_allocated():
    two_bytes = np.array([0, 0xFF], dtype=np.uint8)  # parameter 0, then eight 1 bits: at most eight indices
    assert decode_index_gaps(two_bytes, 8, 2**61).tolist() == list(range(8))
    with pytest.raises(CodecError, match="does not fit 9 indices"):
        decode_index_gaps(two_bytes, 9, 2**61)
    with pytest.raises(CodecError, match="does not fit"):
        decode_index_gaps(two_bytes, 10**15, 2**61)  # 8 PB of positions, were they allocated
    with pytest.raises(CodecError, match="do not fit"):
        decode_index_gaps(two_bytes, 8, 2**62)  # sums of gaps could pass int64 in a tensor this large


def _index_sets(seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Index sets of several densities (so several Rice parameters, 0 among them) and an empty one, with their
    codings and sizes."""
    rng = np.random.default_rng(seed)
    sets, numels = [], []
    for numel, density in ((5_000, 0.01), (300, 0.9), (40_000, 0.001), (100, 0.0), (20_000, 0.6),
                           (9, 1.0), (70_000, 0.05), (1_000, 0.2), (3, 0.5), (2**40, 1e-9)):
        chosen = np.flatnonzero(rng.random(numel) < density) if numel < 2**20 else np.sort(rng.choice(numel, 50))
        sets.append(np.unique(chosen))
        numels.append(numel)
    return sets, [encode_index_gaps(s) for s in sets], numels


def _decoded_bit_by_bit(data: np.ndarray, count: int) -> list[int]:
    """The indices a Rice coding holds, read one bit at a time with Python integers (no length checks)."""
    bits = "".join(f"{byte:08b}" for byte in data.tobytes())
    b = int(bits[:8], 2)
    low_end = 8 * (1 + (count * b + 7) // 8)
    unary = bits[low_end:]
    indices, previous, zeros = [], -1, 0
    for bit in unary:
        if bit == "0":
            zeros += 1
            continue
        k = len(indices)
        low = int(bits[8 + k * b : 8 + (k + 1) * b] or "0", 2)
        previous += 1 + (zeros << b) + low
        indices.append(previous)
        zeros = 0
    return indices


def test_the_compiled_decoder_reads_what_a_bit_by_bit_reading_finds():
    sets, codes, numels = _index_sets(7)
    assert len({int(c[0]) for c in codes if c.size}) >= 4  # several Rice parameters, 0 among them
    assert any(c.size and c[0] == 0 for c in codes)
    for indices, coded, numel in zip(sets, codes, numels):
        decoded = decode_index_gaps(coded, indices.size, numel)
        assert decoded.dtype == np.int64 and np.array_equal(decoded, indices)
        assert decoded.tolist() == (_decoded_bit_by_bit(coded, indices.size) if indices.size else [])


@pytest.mark.parametrize("seed", range(60))
def test_a_corrupt_coding_is_refused_or_is_the_one_coding_with_its_parameter_of_what_it_decodes_to(seed):
    from fedelta.common import rice

    sets, codes, numels = _index_sets(1000 + seed)
    rng = np.random.default_rng(seed)
    victim = int(rng.choice([k for k, c in enumerate(codes) if c.size]))
    bad, count, numel = codes[victim].copy(), sets[victim].size, numels[victim]
    kind = seed % 4
    if kind == 0:
        bad[rng.integers(bad.size)] ^= np.uint8(1 << rng.integers(8))  # one bit flipped
    elif kind == 1:
        bad = bad[: rng.integers(bad.size)]  # cut short
    elif kind == 2:
        bad = np.concatenate([bad, rng.integers(0, 256, 1 + rng.integers(3), dtype=np.uint8)])  # bytes added
    else:
        count += int(rng.choice([-1, 1]))  # the declared count is off by one
    try:
        decoded = rice.decode_indices(bad, count, numel)
    except rice.IndexCodingError:
        return
    # Decoding checks every length and the padding: what it accepts is exactly how the set it returns is coded.
    assert decoded.size == count and (decoded.size == 0 or (np.all(np.diff(decoded) > 0) and decoded[-1] < numel))
    writer = rice.RiceWriter(int(bad[0]))
    writer.add(decoded)
    assert np.array_equal(writer.finish(), bad)


# Property: random corruption of a valid payload is rejected or changes nothing.

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402


def _payload(values: str) -> tuple[Delta, bytes]:
    gen = torch.Generator().manual_seed(3)
    dense = {"a.weight": torch.randn(30, 20, generator=gen), "a.bias": torch.randn(30, generator=gen)}
    seeded = {f"s.{k}": v for k, v in dense.items()}  # pruned under the names they travel by
    parts = {**prune_delta(dense, "magnitude", PruneRequest(0.1, 1), min_size=100).entries,
             **prune_delta(seeded, "dare", PruneRequest(0.2, 2), min_size=100).entries}
    delta = Delta(parts)
    return delta, encode(delta, base=BASE, values=values)


PAYLOADS = {values: _payload(values) for values in ("fp16", "int8", "ternary")}


@pytest.mark.parametrize("values", sorted(PAYLOADS))
def test_the_uncorrupted_payloads_decode_to_what_was_sent(values):
    original, payload = PAYLOADS[values]
    assert _same(decode(payload, LIMITS).delta, original, values)


def test_a_seeded_entry_is_sent_only_under_the_name_its_positions_were_drawn_for():
    entry = prune_delta({"a.weight": torch.randn(30, 20)}, "dare", PruneRequest(0.2, 2)).entries["a.weight"]
    with pytest.raises(ValueError, match="drawn for 'a.weight'"):
        encode(Delta({"b.weight": entry}), base=BASE)


def _same(decoded: Delta, original: Delta, values: str) -> bool:
    """Whether ``decoded`` is exactly what ``original`` becomes when sent with ``values``."""
    from fedelta.common.pruning.recover import as_received

    return decoded.names() == original.names() and all(
        torch.equal(decoded.entries[n].to_dense(), as_received(original.entries[n], values)) for n in original.names()
    )


@hsettings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.sampled_from(sorted(PAYLOADS)),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_corrupted_payload_is_rejected_or_decodes_to_the_original(values, edits, cut):
    original, payload = PAYLOADS[values]
    data = bytearray(payload)
    for position, byte in edits:
        data[position % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        decoded = decode(bytes(data), LIMITS)
    except CodecError:
        return
    assert _same(decoded.delta, original, values)


@hsettings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.sampled_from(sorted(PAYLOADS)),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4),
)
def test_corrupted_container_inside_a_valid_frame_raises_only_codec_errors(values, edits):
    raw = bytearray(zstandard.ZstdDecompressor().decompress(PAYLOADS[values][1]))
    for position, byte in edits:
        raw[position % len(raw)] = byte
    data = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(bytes(raw))
    try:
        decoded = decode(data, LIMITS)
    except CodecError:
        return
    assert decoded.delta.count() <= LIMITS.max_elements


@pytest.mark.parametrize("values", ["fp32", "bf16", "int8"])
def test_the_same_delta_encodes_to_the_same_bytes(values):
    meta = {"method": "full", "prune": "dare", "round": "3", "site": "site-1"}
    payloads = {encode(_delta(), base=BASE, values=values, meta=meta) for _ in range(8)}
    assert len(payloads) == 1
    raw = zstandard.ZstdDecompressor().decompress(payloads.pop())
    size = int.from_bytes(raw[:8], "little")
    assert size % 8 == 0 and raw[8 + size - 1:8 + size] in (b" ", b"}")
    loaded = safetensors.torch.load(raw)  # the safetensors library reads it
    assert {"w.dense/values", "w.sparse/indices", "w.seeded/values"} <= loaded.keys()
    assert loaded["w.dense/values"].numel() == 12 and loaded["w.sparse/indices"].dtype == torch.uint8


def _merged_like(seed: int) -> dict[str, torch.Tensor]:
    """Dense fp32 tensors as an aggregator leaves them: some untouched (all +0.0), some partly and some fully
    touched, with a -0.0 that must travel."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, numel, density in (("zeros", 300, 0.0), ("few", 5000, 0.002), ("some", 9000, 0.3),
                                 ("most", 7000, 0.9), ("all", 2500, 1.0), ("one", 1, 1.0)):
        values = torch.randn(numel, generator=generator)
        values[torch.rand(numel, generator=generator) >= density] = 0.0
        out[name] = values.reshape(-1, 50) if numel % 50 == 0 else values
    out["some"].view(-1)[7] = -0.0
    return out


@pytest.mark.parametrize("values", ["fp32", "fp16", "bf16"])
def test_encode_and_apply_in_chunks_matches_encode_then_apply_bit_for_bit(values, monkeypatch):
    monkeypatch.setattr(codec, "CHUNK", 1000)  # several chunks per tensor, and tensors of one chunk
    tensors = _merged_like(3)
    generator = torch.Generator().manual_seed(4)
    base = {name: torch.randn(value.shape, generator=generator) for name, value in tensors.items()}
    base["zeros"].view(-1)[:3] = torch.tensor([0.0, -0.0, 1.0])
    expected_params = {name: value.clone() for name, value in base.items()}
    expected = encode(Delta({n: Dense(v.clone()) for n, v in tensors.items()}), base="b" * 64, values=values,
                      meta={"kind": "merged"})
    apply_delta(expected_params, decode(expected, LIMITS).delta)

    params = {name: value.clone() for name, value in base.items()}
    delta = Delta({n: Dense(v) for n, v in tensors.items()})
    blob = encode_and_apply(delta, params, base="b" * 64, values=values, meta={"kind": "merged"})

    assert blob == expected
    assert not delta.entries  # taken out as encoded
    for name in base:
        assert torch.equal(params[name].view(torch.int32), expected_params[name].view(torch.int32)), name
    kinds = {name: type(entry).__name__ for name, entry in decode(blob, LIMITS).delta.entries.items()}
    assert kinds["few"] == "Sparse" and kinds["all"] == "Dense" and kinds["zeros"] == "Sparse"


def test_encode_and_apply_refuses_what_it_cannot_do_in_chunks_and_leaves_the_weights():
    params = {"w": torch.ones(4)}
    with pytest.raises(ValueError, match="without a scale"):
        encode_and_apply(Delta({"w": Dense(torch.ones(4))}), params, base="", values="int8")
    with pytest.raises(TypeError, match="dense entries"):
        encode_and_apply(Delta({"w": Sparse((4,), torch.tensor([1]), torch.ones(1))}), params, base="")
    with pytest.raises(ValueError, match="non-finite"):
        encode_and_apply(Delta({"w": Dense(torch.tensor([1.0, float("nan"), 0.0, 0.0]))}), params, base="")
    assert torch.equal(params["w"], torch.ones(4))


def test_encode_and_apply_of_half_precision_entries_sent_as_fp32_matches_encode(monkeypatch):
    monkeypatch.setattr(codec, "CHUNK", 100)
    values = torch.arange(1000, dtype=torch.float16) / 8 + 0.5
    values[::5] = 0.0  # 80 % kept: sent as indices, four bytes a value into a buffer of two a value
    params, expected_params = {"w": torch.zeros(1000)}, {"w": torch.zeros(1000)}
    expected = encode(Delta({"w": Dense(values.clone())}), base="", values="fp32")
    apply_delta(expected_params, decode(expected, LIMITS).delta)
    assert bytes(encode_and_apply(Delta({"w": Dense(values)}), params, base="", values="fp32")) == expected
    assert torch.equal(params["w"], expected_params["w"])


def test_container_tensors_are_read_in_place_and_a_misaligned_one_is_copied_out():
    from fedelta.common.container import read_tensors

    halves = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    singles = torch.tensor([0.25, 3.0], dtype=torch.float32)
    # 8 bytes of header stand-in, then 1 byte, 2 bf16 values at data offset 1 (odd), 2 fp32 values at 5 (odd)
    raw = bytearray(b"\x00" * 8 + b"\x07" + halves.view(torch.uint8).numpy().tobytes()
                    + singles.view(torch.uint8).numpy().tobytes())
    records = {"u": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
               "h": {"dtype": "BF16", "shape": [2], "data_offsets": [1, 5]},
               "f": {"dtype": "F32", "shape": [2, 1], "data_offsets": [5, 13]}}
    tensors = read_tensors(raw, records)
    assert tensors["u"].tolist() == [7] and torch.equal(tensors["h"], halves)
    assert torch.equal(tensors["f"], singles.reshape(2, 1))
    raw[8] = 9  # the aligned byte tensor is a view of the buffer; the misaligned ones were copied
    raw[9:13] = bytes(4)
    assert tensors["u"].tolist() == [9] and torch.equal(tensors["h"], halves)
