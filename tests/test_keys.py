"""Deployment pieces without a network: key material, the site's data check, and the launch files."""

from __future__ import annotations

import csv
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import ExtensionOID

from fedelta.common.data import label_names, load_file
from fedelta.common.config import Settings
from fedelta.common.keys import add_site, check_site_key, make_keys, read_sites, site_names
from fedelta.common.app_folder import config_toml
from fedelta.server.cmd_server import connection_toml
from fedelta.client.cmd_site import check_data

PROJECT = Path(__file__).resolve().parent.parent


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_keys_make_a_ca_a_superlink_certificate_it_signed_and_one_key_pair_per_site(tmp_path):
    sites = make_keys(tmp_path, site_names(3), ["fl.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(SHA256()))
    names = server.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1", "::1"]
    assert ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca is True
    assert [site.name for site in sites] == ["site-1", "site-2", "site-3"]
    for private in ("ca.key", "superlink.key", "sites/site-1", "sites/site-3"):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600, private
    listed = read_sites(tmp_path)
    assert [(site.name, site.public_key) for site in listed] == [(site.name, site.public_key) for site in sites]
    for site in sites:
        assert check_site_key(site.private_key) == site.public_key
        assert site.public_key.startswith("ecdsa-sha2-nistp384 ")
        assert (tmp_path / "sites" / f"{site.name}.pub").read_text().split()[:2] == site.public_key.split()
    assert len({site.public_key for site in sites}) == 3


def test_keys_refuse_to_overwrite_a_ca_and_duplicate_or_bad_site_names(tmp_path):
    make_keys(tmp_path, ["a"], [])
    with pytest.raises(ValueError, match="already holds a CA"):
        make_keys(tmp_path, ["b"], [])
    with pytest.raises(ValueError, match="already in"):
        add_site(tmp_path, "a")
    with pytest.raises(ValueError, match="site name"):
        add_site(tmp_path, "../b")
    with pytest.raises(ValueError, match="distinct"):
        make_keys(tmp_path / "other", ["x", "x"], [])
    with pytest.raises(ValueError, match="--sites"):
        site_names(0)
    added = add_site(tmp_path, "b")
    assert [site.name for site in read_sites(tmp_path)] == ["a", "b"] and added.private_key.is_file()


def test_a_site_key_that_is_not_an_ec_openssh_key_is_refused(tmp_path):
    make_keys(tmp_path, ["a"], [])
    with pytest.raises(ValueError, match="OpenSSH private key"):
        check_site_key(tmp_path / "superlink.crt")
    with pytest.raises(FileNotFoundError):
        check_site_key(tmp_path / "missing")


def test_site_data_labels_map_onto_the_models_label_set(tmp_path):
    labels = label_names(Settings().data)
    assert labels == ("rotten", "fresh")
    path = _write_csv(tmp_path / "d.csv", [{"text": "good", "label": "fresh"}, {"text": "bad", "label": "rotten"},
                                           {"text": "ok", "label": "1"}, {"text": "meh", "label": "0"}])
    corpus = load_file(path, labels)
    assert corpus.labels == [1, 0, 1, 0] and corpus.label_names == labels
    assert check_data(path, labels) == "4 examples (rotten 2, fresh 2)"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "a", "label": "positive"}, {"text": "b", "label": "fresh"}], r"label\(s\) 'positive' outside"),
        ([{"text": "a", "label": "2"}, {"text": "b", "label": "0"}], r"label\(s\) '2' outside"),
        ([{"body": "a", "label": "0"}, {"body": "b", "label": "1"}], r"lacks column\(s\) \['text'\]"),
        ([{"text": "a", "label": "0"}], "at least 2 rows"),
    ],
)
def test_bad_site_data_is_refused_with_what_is_wrong(tmp_path, rows, message):
    path = _write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(ValueError, match=message):
        check_data(path, ("rotten", "fresh"))


def test_unreadable_site_data_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match="cannot be read"):
        check_data(path, ("rotten", "fresh"))


def test_fedelta_site_checks_its_data_before_starting_a_supernode(tmp_path):
    make_keys(tmp_path / "keys", ["s"], [])
    data = _write_csv(tmp_path / "d.csv", [{"text": "a", "label": "fresh"}, {"text": "b", "label": "sour"}])
    command = [sys.executable, "-m", "fedelta", "site", "--superlink", "127.0.0.1:9", "--certs",
               str(tmp_path / "keys"), "--key", str(tmp_path / "keys" / "sites" / "s"), "--data", str(data),
               "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert done.returncode == 2
    assert "'sour' outside the model's label set ['rotten', 'fresh']" in done.stderr
    assert "Starting Flower SuperNode" not in done.stdout and not (tmp_path / "cache").exists()


def test_an_instruction_file_is_checked_as_the_causal_lm_task_reads_it(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Is it good?", "response": "yes"}\n{"text": "notes"}\n', encoding="utf-8")
    assert check_data(good, ("rotten", "fresh"), "causal-lm") == "2 examples (1 with a prompt, 1 plain text)"
    make_keys(tmp_path / "keys", ["s"], [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Is it good?", "response": "yes"}\n{"prompt": "And this?"}\n', encoding="utf-8")
    command = [sys.executable, "-m", "fedelta", "site", "--superlink", "127.0.0.1:9", "--certs",
               str(tmp_path / "keys"), "--key", str(tmp_path / "keys" / "sites" / "s"), "--data", str(bad),
               "--cache-dir", str(tmp_path / "cache"), "--task", "causal-lm"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert done.returncode == 2
    assert f"data file {str(bad)!r}, row 2, column 'response': must be non-empty text, found missing" in done.stderr
    assert not (tmp_path / "cache").exists()


def test_launch_files_round_trip_through_toml(tmp_path):
    overrides = {"model.path": "tiny-bert", "rounds": 3, "local.lr": 0.001, "feedback.enabled": True,
                 "output.dir": str(tmp_path / 'a "quoted" dir')}
    assert tomllib.loads(config_toml(overrides)) == overrides
    connection = tomllib.loads(connection_toml("127.0.0.1:9092", tmp_path / "ca.crt"))
    assert connection["superlink"]["default"] == "fedelta"
    assert connection["superlink"]["fedelta"] == {"address": "127.0.0.1:9092",
                                                  "root-certificates": str(tmp_path / "ca.crt")}
