"""``fedelta keys``: the CA, SuperLink certificate and per-site key pairs of a deployment."""

from __future__ import annotations

import argparse
from pathlib import Path


def _keys(args: argparse.Namespace) -> int:
    from fedelta.common.keys import CA_CERT, SERVER_CERT, SITES_LIST, add_site, make_keys, site_names, superlink_hosts

    out = Path(args.out)
    if args.add:
        if not (out / CA_CERT).is_file():
            raise FileNotFoundError(f"{out / CA_CERT} does not exist; create the folder first (--sites N)")
        for site in (add_site(out, name) for name in args.add):
            print(f"site key          {site.private_key}   (copy to {site.name} only; restart `fedelta server`)")
        return 0
    if not args.name and args.sites is None:
        raise ValueError("give --sites N or one --name per site")
    names = args.name or site_names(args.sites)
    if args.name and args.sites is not None and args.sites != len(args.name):
        raise ValueError(f"--sites {args.sites} disagrees with the {len(args.name)} --name given")
    hosts = args.host or []
    sites = make_keys(out, names, hosts)
    print(f"CA certificate    {out / CA_CERT}   (copy to every site)")
    print(f"SuperLink cert    {out / SERVER_CERT} for {', '.join(superlink_hosts(hosts))}")
    for site in sites:
        print(f"site key          {site.private_key}   (copy to {site.name} only)")
    print(f"registered sites  {out / SITES_LIST}   (`fedelta server` registers every key listed)")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser(
        "keys",
        help="create the CA, SuperLink certificate and site key pairs of a deployment",
        description="Create a certificate authority, a TLS certificate for the SuperLink (valid for the "
        "--host names plus localhost, 127.0.0.1 and ::1), one EC P-384 authentication key pair per site "
        "(OpenSSH format, as Flower reads it) and sites.csv, the list of site public keys the server "
        "registers. Each site needs ca.crt and its own private key, nothing else.",
    )
    keys.add_argument("--out", required=True, help="folder to create (refused if it already holds a CA)")
    keys.add_argument("--sites", type=int, help="number of sites, named site-1 .. site-N")
    keys.add_argument("--name", action="append", help="a site name instead of site-K (repeat per site); the "
                      "server records each site under the name its key is registered with")
    keys.add_argument("--add", action="append", metavar="NAME",
                      help="add a site's key pair to an existing folder (repeatable)")
    keys.add_argument("--host", action="append", metavar="HOST",
                      help="a DNS name or IP address sites use to reach the SuperLink (repeatable)")
    keys.set_defaults(handler=_keys)
