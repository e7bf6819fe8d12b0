"""Hostile uploads: each malformed one is a one-line rejection, receive never raises, and the round still commits."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import zstandard
from conftest import TINY
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from rounds import open_federation, rebound

from fedelta.common.codec import FORMAT, CodecError, Limits, decode
from fedelta.common.config import Settings
from fedelta.common.untrusted_json import UntrustedJSONError, loads, nested_within
from fedelta.simulations.hostile_uploads import Target, bombs, honest_uploads
from fedelta.simulations.upload_mutators import mutate

BASE = "ab" * 32
LIMITS = Limits(max_bytes=1 << 24, max_elements=100_000)
HONEST_METRICS = {"num-examples": 10.0}


def _container(entries: str, records: str = "", values: str = "fp32", data: bytes = b"") -> bytes:
    """A compressed container whose entries JSON and tensor records are given as text (hostile JSON included)."""
    meta = json.dumps({"format": FORMAT, "base": BASE, "values": values, "entries": entries})
    header = ('{"__metadata__": ' + meta + (", " + records if records else "") + "}").encode()
    return zstandard.ZstdCompressor(write_checksum=True).compress(len(header).to_bytes(8, "little") + header + data)


def _dense(name: str, shape: str, record_shape: str = "[4]", data: bytes = bytes(16)) -> bytes:
    entries = json.dumps({name: {"kind": "dense", "shape": "@"}}).replace('"@"', shape)
    record = f'"{name}/values": {{"dtype": "F32", "shape": {record_shape}, "data_offsets": [0, {len(data)}]}}'
    return _container(entries, record, data=data)


def _zero_sized(count: int) -> bytes:
    entries = json.dumps({f"z.{i}": {"kind": "dense", "shape": [0]} for i in range(count)})
    record = '{"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}'
    records = ", ".join(f'"z.{i}/values": {record}' for i in range(count))
    return _container(entries, records)


RECORD_W = '"w/values": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}'


def _with_kind(kind: object) -> bytes:
    return _container(json.dumps({"w": {"kind": kind, "shape": [4]}}), RECORD_W, data=bytes(16))


REPORTED = {  # the crashes the hostile tester reported, and the clean refusal each now gets
    "kind as a list": (_with_kind(["dense"]), "entry 'w': unknown kind ['dense']"),
    "kind as an object": (_with_kind({"dense": 1}), "entry 'w': unknown kind {'dense': 1}"),
    "deep entries JSON": (_container("[" * 10_000 + "]" * 10_000),
                          "entries metadata: JSON nested deeper than 3 (or unbalanced)"),
    "deep header JSON": (_container("{}", '"x": ' + "[" * 10_000 + "]" * 10_000),
                         "container header: JSON nested deeper than 3 (or unbalanced)"),
    "a 5,000-digit integer": (_dense("w", "1" + "0" * 4999),
                              "entries metadata: a number of 5000 digits in a row, more than 20"),
    "a zero dimension next to 2**63": (_dense("w", f"[0, {2**63}]", "[0]", b""),
                                       f"entry 'w': bad shape [0, {2**63}]"),
    "a zero-sized record dimension next to 2**63": (_dense("w", "[0]", f"[0, {2**63}]", b""),
                                                    f"tensor 'w/values': bad shape [0, {2**63}]"),
}


@pytest.mark.parametrize("case", sorted(REPORTED))
def test_each_reported_crash_is_a_one_line_codec_error(case):
    payload, message = REPORTED[case]
    with pytest.raises(CodecError) as raised:
        decode(payload, LIMITS)
    assert str(raised.value) == message


def test_200000_zero_sized_entries_are_refused_by_the_entry_bound_before_parsing():
    payload, roomy = _zero_sized(200_000), Limits(max_bytes=1 << 26, max_elements=100_000)
    with pytest.raises(CodecError, match=r"exceeds the \d+ allowed for at most 4096 entries$"):
        decode(payload, roomy)
    with pytest.raises(CodecError, match=r"exceeds the \d+ allowed for at most 3 entries$"):
        decode(payload, roomy, shapes={"a": (4,), "b": (4,), "c": (2, 2)})


def test_more_entries_than_model_tensors_are_refused():
    with pytest.raises(CodecError, match="^4 entries, more than the limit of 3$"):
        decode(_zero_sized(4), LIMITS, shapes={"a": (4,), "b": (4,), "c": (2, 2)})


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ('{"w": {"kind": "dense", "shape": [4]}, "w": {"kind": "dense", "shape": [4]}}',
         "entries metadata: key 'w' appears twice"),
        ('{"w": {"kind": "dense", "shape": [true, 4]}}', "entry 'w': bad shape [True, 4]"),
        ('{"w": {"kind": "dense", "shape": [4], "seed": 1}}',
         "entry 'w': fields ['kind', 'seed', 'shape'], expected ['kind', 'shape']"),
        ('{"w": {"kind": "sparse", "shape": [4], "count": 1.0}}', "entry 'w': count 1.0 is not of type int"),
        ('{"w": {"kind": "seeded", "shape": [4], "seed": 1, "keep": NaN}}',
         "entries metadata: NaN is not a JSON number"),
        ('{"w": {"kind": "seeded", "shape": [4], "seed": 1, "keep": 1e999}}',
         "entries metadata: number '1e999' is out of range"),
        ('{"w": {"kind": "seeded", "shape": [4], "seed": -1, "keep": 0.5}}', "entry 'w': seed -1 out of range"),
        ('{"w": {"kind": "low-rank", "shape": [4], "rank": 1}}', "entry 'w': bad rank 1 for shape [4]"),
        ('{"w": {"kind": "dense", "shape": [100001]}}', "entry 'w': bad shape [100001]"),
        ('{"\\ud800": {"kind": "dense", "shape": [4]}}', "entry '\\ud800': the name is not text"),
    ],
)
def test_every_declared_value_is_type_and_range_checked(entries, message):
    payload = _container(entries, RECORD_W, data=bytes(16))
    with pytest.raises(CodecError) as raised:
        decode(payload, LIMITS)
    assert str(raised.value) == message


def test_an_entry_for_a_model_tensor_must_declare_its_shape():
    with pytest.raises(CodecError) as raised:
        decode(_dense("w", "[4]"), LIMITS, shapes={"w": (2, 2)})
    assert str(raised.value) == "entry 'w': shape (4,) is not the model's (2, 2)"
    assert decode(_dense("w", "[4]"), LIMITS, shapes={"w": (4,)}).delta.names() == ["w"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}',
         "tensor 'w/values': dtype 'F64' is not one the codec writes"),
        ('{"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}',
         "tensor 'w/values': dtype ['F32'] is not one the codec writes"),
        ('{"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}', "tensor 'w/values': bad data offsets [16, 0]"),
        ('{"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}', "tensor 'w/values': 12 bytes for shape [4] of F32"),
        ('{"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "x": 1}', "tensor 'w/values': not a tensor record"),
    ],
)
def test_tensor_records_are_checked_before_safetensors_reads_them(record, message):
    entries = json.dumps({"w": {"kind": "dense", "shape": [4]}})
    with pytest.raises(CodecError) as raised:
        decode(_container(entries, f'"w/values": {record}', data=bytes(16)), LIMITS)
    assert str(raised.value) == message


def test_a_frame_expanding_past_the_upload_bound_is_refused_before_decompressing():
    limits = Limits(max_bytes=1 << 24, max_elements=1000, max_expansion=1024)
    bomb = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(1 << 23))
    with pytest.raises(CodecError) as raised:
        decode(bomb, limits)
    assert str(raised.value) == (f"declared size {1 << 23} is over {1024 * len(bomb) + 4000}: a dense fp32 model "
                                 f"plus 1024 times the {len(bomb)} bytes sent")


def test_bytes_after_the_frame_are_refused():
    with pytest.raises(CodecError, match="bytes follow the zstd frame"):
        decode(_dense("w", "[4]") + b"\x00", LIMITS)


def test_a_frame_cut_short_or_failing_its_checksum_is_refused():
    whole = _dense("w", "[4]")
    for cut in (1, 3, 5):
        with pytest.raises(CodecError, match="cut short|corrupt zstd frame"):
            decode(whole[:-cut], LIMITS)
    flipped = bytearray(whole)
    flipped[-1] ^= 0xFF  # the last byte of the checksum
    with pytest.raises(CodecError, match="checksum"):
        decode(bytes(flipped), LIMITS)


@pytest.mark.parametrize(
    ("text", "depth", "within"),
    [
        (b'{"a": [1, 2]}', 2, True),
        (b'{"a": [[1]]}', 2, False),
        (b'{"a": "[[[[[[", "b": "\\"[[["}', 1, True),
        (b'{"a": "\\\\", "b": [[1]]}', 2, False),
        (b"[[]", 5, False),
        (b"]]", 5, False),
    ],
)
def test_nesting_is_measured_on_brackets_outside_strings(text, depth, within):
    assert nested_within(text, depth) is within


def test_untrusted_json_refuses_what_python_would_parse_or_choke_on():
    assert loads(b'{"a": [1, 2.5, "x"]}', max_bytes=100, max_depth=2) == {"a": [1, 2.5, "x"]}
    assert loads(b'{"9999999999999999999999": "' + b"9" * 30 + b'", "n": 18446744073709551615}', max_bytes=100,
                 max_depth=2) == {"9" * 22: "9" * 30, "n": 2**64 - 1}  # digits in strings are not a number's
    for text in (b'{"a": 1, "a": 2}', b"[" + b"9" * 21 + b"]", b"[Infinity]", b'"\xff"', b"[1]" + b" " * 100):
        with pytest.raises(UntrustedJSONError):
            loads(text, max_bytes=100, max_depth=2)


# Through the coordinator: receive answers True or False, and a round commits only what it accepted.

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    settings = Settings().with_overrides({**TINY, "output.dir": str(root / "out")})
    with open_federation(settings, root) as (coordinator, _):
        honest = [
            upload for method in ("full", "lora")
            for upload in honest_uploads(method, coordinator.params, coordinator.allowed, coordinator.bundle.head,
                                         coordinator.resolver, coordinator.head.sha)
        ]
        target = Target(coordinator.shapes, coordinator.upload_limits.max_elements,
                        bombs=bombs(coordinator.upload_limits.max_bytes, honest[0].payload))
        yield coordinator, honest, target


def test_honest_uploads_of_every_kind_and_value_type_are_accepted(hostile):
    coordinator, honest, _ = hostile
    admitted = {upload.label: coordinator.receive(node="0", site=upload.label, server_round=1, payload=upload.payload,
                                                  metrics=HONEST_METRICS) for upload in honest}
    coordinator.held.clear()
    assert len(admitted) == 20 and all(admitted.values())


@pytest.mark.parametrize("case", sorted(REPORTED))
def test_each_reported_crash_is_a_recorded_rejection(hostile, case):
    coordinator, _, _ = hostile
    payload, message = REPORTED[case]
    assert coordinator.receive(node="9", site=case, server_round=1, payload=payload, metrics=HONEST_METRICS) is False
    assert coordinator.store.rejections()[-1] == (case, 1, message)


def test_an_unexpected_error_becomes_a_rejection_naming_its_type(hostile, monkeypatch):
    coordinator, honest, _ = hostile

    class Broken:
        def resolve(self, delta):
            raise KeyError("no\nsuch key")

    monkeypatch.setattr(coordinator, "resolver", Broken())
    assert coordinator.receive(node="9", site="odd", server_round=1, payload=honest[0].payload,
                               metrics=HONEST_METRICS) is False
    assert coordinator.store.rejections()[-1] == ("odd", 1, "KeyError: 'no\\nsuch key'")


@hsettings(max_examples=2700, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(index=st.integers(min_value=0, max_value=10**6), seed=st.integers(min_value=0, max_value=2**63))
def test_receive_answers_every_mutated_upload_with_true_or_false(hostile, index, seed):
    coordinator, honest, target = hostile
    source = honest[index % len(honest)]
    _, payload = mutate(source.payload, np.random.default_rng(seed), target)
    before = len(coordinator.held)
    admitted = coordinator.receive(node="9", site=source.label, server_round=1, payload=payload, metrics=HONEST_METRICS)
    assert admitted is (len(coordinator.held) == before + 1)
    if not admitted:
        reason = coordinator.store.rejections()[-1][2]
        assert reason and "\n" not in reason
    coordinator.held.clear()


def _round(settings, root, uploads):
    """Receive ``uploads`` (site, payload) in round 1, then commit: which were admitted, head hash, merged delta."""
    with open_federation(settings, root) as (coordinator, _):
        admitted = [coordinator.receive(node=str(index), site=site, server_round=1, payload=payload,
                                        metrics=HONEST_METRICS) for index, (site, payload) in enumerate(uploads)]
        version = coordinator.commit(1)
        merged = decode(coordinator.store.read_blob(version), coordinator.limits).delta
        return admitted, version.sha, {name: entry.to_dense() for name, entry in merged.entries.items()}


def test_a_round_that_received_mutated_uploads_commits_exactly_the_merge_of_what_it_accepted(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path / "sites") as (coordinator, sites):
        replies = [site.train_round(1, coordinator.downlink_for(str(i))) for i, site in enumerate(sites)]
        target = Target(coordinator.shapes, coordinator.upload_limits.max_elements)
    honest = [(site.name, reply.payload) for site, reply in zip(sites, replies)]
    rng = np.random.default_rng(7)
    bound = [(f"hostile-{i:03d}", rebound(honest[i % 2][1], coordinator.limits, 1, f"hostile-{i:03d}"))
             for i in range(300)]
    mutants = [(site, mutate(payload, rng, target)[1]) for site, payload in bound]

    admitted, sha, merged = _round(tiny_settings, tmp_path / "with", honest + mutants)
    kept = [upload for upload, ok in zip(mutants, admitted[2:]) if ok]
    again, sha_without, merged_without = _round(tiny_settings, tmp_path / "without", honest + kept)

    assert admitted[:2] == [True, True] and all(again) and 0 < len(kept) < len(mutants)
    assert sha == sha_without and merged.keys() == merged_without.keys()
    assert all(torch.equal(merged[name].view(torch.int32), merged_without[name].view(torch.int32)) for name in merged)


def test_an_upload_that_fails_its_second_decode_at_commit_is_rejected_not_raised(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        for index, site in enumerate(sites):
            reply = site.train_round(1, coordinator.downlink_for(str(index)))
            assert coordinator.receive(node=str(index), site=site.name, server_round=1, payload=reply.payload,
                                       metrics=reply.metrics)
        extra = coordinator.held[0]
        coordinator.held.append(replace(extra, site="site-z", payload=extra.payload[:-1]))
        version = coordinator.commit(1)
        reasons = coordinator.store.rejections()
    assert version is not None and coordinator.tally.rejected == 1
    assert reasons == [("site-z", 1, "zstd frame is cut short")]


def test_the_fuzzer_counts_every_payload_and_finds_no_crash():
    from fedelta.simulations.fuzz_upload import run

    result = run(60, seed=1, model="tiny-bert")

    assert result["payloads"] == sum(result["counts"].values()) == 60
    assert result["crashes"] == result["accepted_bad"] == result["hangs"] == 0
    assert set(result["counts"]) <= {"accepted", "rejected by the decoder", "rejected by the resolver",
                                     "rejected by validation"}
