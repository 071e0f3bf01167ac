"""What every bus-speaking ``huddle`` command shares: where the bus is,
the cluster key option, and the codec that key makes. The CLI and the
client commands (inject, monitor, tap) import it; it imports none of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bus.envelope import Codec

__all__ = ["UNSIGNED_CLUSTER_REFUSED", "add_cluster_key_option", "bus_of", "cluster_codec", "redis_url_of"]


def redis_url_of(args: argparse.Namespace) -> str | None:
    """The bus a command uses: ``--redis-url``, else ``$REDIS_URL``."""
    return args.redis_url or os.environ.get("REDIS_URL")


def add_cluster_key_option(parser: argparse.ArgumentParser) -> None:
    """``--cluster-key-file``: the option of every command that speaks on the bus."""
    parser.add_argument("--cluster-key-file", metavar="FILE",
                        help="sign and verify envelopes with the cluster key in FILE (one key per line: the first "
                        "signs, any verifies); default $HUDDLE_CLUSTER_KEY; neither: signing off")


UNSIGNED_CLUSTER_REFUSED = (
    "refused: a cluster node signs its envelopes, and no cluster key was given. Without one, anyone who can "
    "publish on this Redis can speak for any actor of the fleet (forge an owner's messages, claim its leases). "
    "Give every node and tool the same key: --cluster-key-file FILE (make one with `huddle keygen FILE`) or "
    "$HUDDLE_CLUSTER_KEY. To run a fleet without signing anyway (a trusted network, Redis ACLs as the only "
    "guard), pass --insecure-no-signing.")


def cluster_codec(args: argparse.Namespace) -> Codec | None:
    """The codec for the cluster key of ``args`` (no key: signing off), or
    ``None`` after saying on stderr why the key was refused."""
    from bus.envelope import Codec
    from bus.errors import HuddleError
    from bus.signing import cluster_signer

    try:
        return Codec(signer=cluster_signer(getattr(args, "cluster_key_file", None)))
    except HuddleError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return None


def bus_of(args: argparse.Namespace, command: str) -> tuple[str, Codec] | None:
    """The bus URL and codec a client command (inject, monitor, tap) uses,
    or ``None`` after saying on stderr what is wrong. A command with an
    ``address`` argument also gets it checked."""
    from bus.address import is_valid_address

    url = redis_url_of(args)
    if url is None:
        print(f"huddle {command} needs a bus: set REDIS_URL or pass --redis-url", file=sys.stderr)
        return None
    address = getattr(args, "address", None)
    if address is not None and not is_valid_address(address):
        print(f"not an address: {address!r} (expected kind:id[/sub])", file=sys.stderr)
        return None
    codec = cluster_codec(args)
    return None if codec is None else (url, codec)
