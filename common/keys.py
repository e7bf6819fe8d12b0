"""Key material for a deployment: a CA, the SuperLink's TLS certificate, and one auth key pair per site.

Layout of the folder :func:`make_keys` writes (private keys are mode 0600)::

    ca.crt, ca.key            the certificate authority every site trusts
    superlink.crt, .key       the SuperLink's TLS certificate, signed by the CA, for the given hosts
    sites/<name>, <name>.pub  one EC P-384 key pair per site, OpenSSH format (what Flower reads)
    sites.csv                 site,public_key: the SuperNodes the server registers

Only the CA certificate and a site's own private key travel to that site.
"""

from __future__ import annotations

import csv
import datetime
import io
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "superlink.crt", "superlink.key"
SITES_DIR, SITES_LIST = "sites", "sites.csv"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
VALID_DAYS = 825


@dataclass(frozen=True)
class SiteKey:
    """A site's name, its private key file and its public key (OpenSSH text)."""

    name: str
    private_key: Path
    public_key: str


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    handle = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(handle, "wb") as file:
        file.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedelta"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 signer: ec.EllipticCurvePrivateKey, is_ca: bool, hosts: list[str]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
    return builder.sign(signer, hashes.SHA256())


def superlink_hosts(hosts: list[str]) -> list[str]:
    """The hosts the certificate names: the given ones plus loopback (the ServerApp reaches its SuperLink there)."""
    names: list[str] = []
    for host in [*hosts, *LOOPBACK_HOSTS]:
        host = host.strip()
        if not host or "/" in host or any(c.isspace() for c in host):
            raise ValueError(f"--host {host!r} is not a host name or IP address")
        if host not in names:
            names.append(host)
    return names


def site_names(count: int, prefix: str = "site") -> list[str]:
    if count < 1:
        raise ValueError(f"--sites must be at least 1, got {count}")
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


def make_keys(out: Path, sites: list[str], hosts: list[str]) -> list[SiteKey]:
    """Write a CA, a SuperLink certificate for ``hosts`` and a key pair per site into ``out``.

    Refuses a folder that already holds a CA, so a deployment's keys are never silently replaced.
    """
    for name in sites:
        if not SITE_NAME.match(name):
            raise ValueError(f"site name {name!r} must be letters, digits, '.', '_' or '-'")
    if len(set(sites)) != len(sites):
        raise ValueError("site names must be distinct")
    out = Path(out)
    if (out / CA_CERT).exists():
        raise ValueError(f"{out} already holds a CA ({CA_CERT}); choose an empty folder, "
                         "or add sites with `fedelta keys --add NAME`")
    names = superlink_hosts(hosts)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _certificate(_name("fedelta CA"), _name("fedelta CA"), ca_key.public_key(), ca_key, True, [])
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _certificate(_name(names[0]), ca_cert.subject, server_key.public_key(), ca_key, False, names)
    _write(out / CA_KEY, _pem_key(ca_key), private=True)
    _write(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(out / SERVER_KEY, _pem_key(server_key), private=True)
    _write(out / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return [add_site(out, name) for name in sites]


def add_site(out: Path, name: str) -> SiteKey:
    """Create site ``name``'s EC P-384 key pair (OpenSSH format) and append it to ``sites.csv``."""
    if not SITE_NAME.match(name):
        raise ValueError(f"site name {name!r} must be letters, digits, '.', '_' or '-'")
    if any(site.name == name for site in read_sites(out, missing_ok=True)):
        raise ValueError(f"site {name!r} is already in {Path(out) / SITES_LIST}")
    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(out) / SITES_DIR / name
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(private.with_name(f"{name}.pub"), public + f" {name}\n".encode(), private=False)
    listing = Path(out) / SITES_LIST
    new = not listing.exists()
    with open(listing, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["site", "public_key"])
        writer.writerow([name, public.decode()])
    return SiteKey(name, private, public.decode())


def read_sites(out: Path, missing_ok: bool = False) -> list[SiteKey]:
    """The sites listed in ``sites.csv``, each public key checked to be an EC key on a NIST curve."""
    listing = Path(out) / SITES_LIST
    if not listing.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"{listing} does not exist; create it with `fedelta keys --out {out}`")
    rows = list(csv.DictReader(io.StringIO(listing.read_text(encoding="utf-8"))))
    sites = []
    for number, row in enumerate(rows, start=2):
        name, text = (row.get("site") or "").strip(), (row.get("public_key") or "").strip()
        try:
            key = serialization.load_ssh_public_key(text.encode())
        except (ValueError, TypeError) as error:
            raise ValueError(f"{listing}:{number}: site {name!r} has no valid OpenSSH public key ({error})") from error
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"{listing}:{number}: site {name!r} needs an EC public key (NIST curve)")
        sites.append(SiteKey(name, Path(out) / SITES_DIR / name, text))
    return sites


def check_site_key(path: Path) -> str:
    """The OpenSSH public key of the site private key at ``path``; a clear error when it is not one."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"site key {str(path)!r} does not exist")
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"site key {str(path)!r} is not an unencrypted OpenSSH private key ({error})") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"site key {str(path)!r} must be an EC key (as `fedelta keys` writes)")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def check_ca(path: Path) -> None:
    """Refuse a missing or unreadable CA certificate with a clear error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"CA certificate {str(path)!r} does not exist (copy ca.crt from `fedelta keys`)")
    try:
        x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as error:
        raise ValueError(f"{str(path)!r} is not a PEM certificate ({error})") from error
