"""bus/cluster/keys.py: the key names the node uses, and the Lua prelude's
names for the same keys (bus/cluster/lua.py), agree; namespaces never
share a key."""

from __future__ import annotations

import re

import pytest

from bus.cluster.keys import ClusterKeys
from bus.cluster.lua import PRELUDE

#: The prelude's per-address / per-node helpers and its fixed keys, by name.
HELPERS = dict(re.findall(r"local function (\w+)_key\(\w\) return P \.\. '([\w:]+)' \.\. \w end", PRELUDE))
#: The per-address helpers: the address is the key's hash tag.
TAGGED = dict(re.findall(r"local function (\w+)_key\(\w\) return P \.\. '([\w:]+)\{' \.\. \w \.\. '\}' end", PRELUDE))
CONSTANTS = dict(re.findall(r"local (\w+) = P \.\. '(\w+)'", PRELUDE))


def test_the_prelude_is_read() -> None:
    assert set(HELPERS) == {"node", "held", "backlogged"}
    assert set(TAGGED) == {"lease", "spec", "ckpt", "issued", "handled", "seen", "backlog"}
    assert set(CONSTANTS) == {"UNOWNED", "MEMBERS", "ERA", "FENCING"}


@pytest.mark.parametrize("helper, method", [("node", "node"), ("held", "held"), ("backlogged", "backlogged")])
def test_each_per_node_key_is_named_alike_on_both_sides(helper: str, method: str) -> None:
    keys = ClusterKeys("ns1:")
    assert getattr(keys, method)("n-1") == keys.prefix + HELPERS[helper] + "n-1"


@pytest.mark.parametrize("helper, method", [
    ("lease", "lease"), ("spec", "spec"), ("ckpt", "checkpoint"), ("issued", "issued"), ("handled", "handled"),
    ("seen", "seen"), ("backlog", "backlog"),
])
def test_each_per_address_key_is_named_alike_and_tagged_with_the_address(helper: str, method: str) -> None:
    keys = ClusterKeys("ns1:")
    assert getattr(keys, method)("meeting:m-1") == keys.prefix + TAGGED[helper] + "{meeting:m-1}"


def test_every_key_of_an_address_hashes_to_the_address_slot() -> None:
    from bus.slots import channel_slot

    keys = ClusterKeys("ns1:")
    for address in ("meeting:m-1", "counter:7", "session:s.1/x"):
        slots = {channel_slot(getattr(keys, m)(address))
                 for m in ("lease", "spec", "checkpoint", "issued", "handled", "seen", "backlog", "fencing_of")}
        assert slots == {channel_slot(address)}


@pytest.mark.parametrize("constant, prop", [
    ("UNOWNED", "unowned"), ("MEMBERS", "members"), ("ERA", "era"), ("FENCING", "fencing"),
])
def test_each_fixed_key_is_named_alike_on_both_sides(constant: str, prop: str) -> None:
    keys = ClusterKeys("ns1:")
    assert getattr(keys, prop) == keys.prefix + CONSTANTS[constant]


def test_two_namespaces_share_no_key() -> None:
    a, b = ClusterKeys("a:"), ClusterKeys("b:")
    names = ["lease", "node", "held", "spec", "checkpoint", "issued", "handled", "seen", "backlog", "backlogged"]
    fixed = ["unowned", "members", "era", "fencing"]
    of = lambda k: {getattr(k, n)("x:1") for n in names} | {getattr(k, n) for n in fixed}  # noqa: E731
    assert len(of(a)) == len(names) + len(fixed)
    assert not of(a) & of(b)
