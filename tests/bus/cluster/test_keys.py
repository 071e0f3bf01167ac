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
CONSTANTS = dict(re.findall(r"local (\w+) = P \.\. '(\w+)'", PRELUDE))


def test_the_prelude_is_read() -> None:
    assert set(HELPERS) >= {"lease", "node", "held", "spec", "ckpt", "issued", "seen", "backlog", "backlogged"}
    assert set(CONSTANTS) == {"UNOWNED", "MEMBERS", "EPOCH", "ERA", "FENCING"}


@pytest.mark.parametrize("helper, method", [
    ("lease", "lease"), ("node", "node"), ("held", "held"), ("spec", "spec"), ("ckpt", "checkpoint"),
    ("issued", "issued"), ("seen", "seen"), ("backlog", "backlog"), ("backlogged", "backlogged"),
])
def test_each_per_address_or_node_key_is_named_alike_on_both_sides(helper: str, method: str) -> None:
    keys = ClusterKeys("ns1:")
    assert getattr(keys, method)("meeting:m-1") == keys.prefix + HELPERS[helper] + "meeting:m-1"


@pytest.mark.parametrize("constant, prop", [
    ("UNOWNED", "unowned"), ("MEMBERS", "members"), ("EPOCH", "epoch"), ("ERA", "era"), ("FENCING", "fencing"),
])
def test_each_fixed_key_is_named_alike_on_both_sides(constant: str, prop: str) -> None:
    keys = ClusterKeys("ns1:")
    assert getattr(keys, prop) == keys.prefix + CONSTANTS[constant]


def test_two_namespaces_share_no_key() -> None:
    a, b = ClusterKeys("a:"), ClusterKeys("b:")
    names = ["lease", "node", "held", "spec", "checkpoint", "issued", "seen", "backlog", "backlogged"]
    fixed = ["unowned", "members", "epoch", "era", "fencing"]
    of = lambda k: {getattr(k, n)("x:1") for n in names} | {getattr(k, n) for n in fixed}  # noqa: E731
    assert len(of(a)) == len(names) + len(fixed)
    assert not of(a) & of(b)
