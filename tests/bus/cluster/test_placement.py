"""Weighted rendezvous hashing: deterministic, minimal disruption, weighted."""

from __future__ import annotations

import collections
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from bus.cluster.placement import owner_of, ranking, score

node_ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8)
clusters = st.dictionaries(node_ids, st.floats(min_value=0.1, max_value=10.0), min_size=1, max_size=8)
addresses = st.builds(lambda k, i: f"{k}:{i}", st.sampled_from(["counter", "meeting", "echo"]),
                      st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12))


@given(addresses, clusters)
def test_the_owner_is_first_in_the_ranking_and_the_ranking_is_complete(address: str, nodes: dict[str, float]) -> None:
    order = ranking(address, nodes)
    assert sorted(order) == sorted(nodes)
    assert owner_of(address, nodes) == order[0]


@given(addresses, clusters)
def test_the_ranking_does_not_depend_on_the_order_nodes_are_listed(address: str, nodes: dict[str, float]) -> None:
    assert ranking(address, dict(reversed(list(nodes.items())))) == ranking(address, nodes)


@given(addresses, clusters, st.data())
def test_a_node_leaving_moves_only_its_own_addresses_to_the_runner_up(address: str, nodes: dict[str, float],
                                                                      data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(sorted(nodes)))
    rest = {n: w for n, w in nodes.items() if n != gone}
    before = ranking(address, nodes)
    after = ranking(address, rest)
    assert after == [n for n in before if n != gone]  # everyone else keeps their relative order


@given(addresses, clusters, node_ids, st.floats(min_value=0.1, max_value=10.0))
def test_a_node_joining_takes_an_address_or_leaves_it_where_it_was(address: str, nodes: dict[str, float],
                                                                   newcomer: str, weight: float) -> None:
    if newcomer in nodes:
        return
    before = owner_of(address, nodes)
    after = owner_of(address, {**nodes, newcomer: weight})
    assert after in (before, newcomer)


def test_nodes_without_capacity_host_nothing() -> None:
    assert owner_of("a:1", {"n1": 0.0}) is None
    assert ranking("a:1", {"n1": 0.0, "n2": 1.0}) == ["n2"]
    assert owner_of("a:1", {}) is None


def test_shares_follow_capacity() -> None:
    """Over 30,000 addresses, a node of weight w gets about w / sum(w) of
    them (a fixed set of addresses: the result is the same every run)."""
    nodes = {"small": 1.0, "medium": 2.0, "large": 3.0}
    counts = collections.Counter(owner_of(f"counter:{i}", nodes) for i in range(30_000))
    for node, weight in nodes.items():
        assert abs(counts[node] / 30_000 - weight / 6.0) < 0.02, counts


def test_scores_are_the_same_in_another_process() -> None:
    """No salted hash: another interpreter ranks alike."""
    here = [score("node-1", f"meeting:{i}", 1.5) for i in range(5)]
    code = "from bus.cluster.placement import score; print([score('node-1', f'meeting:{i}', 1.5) for i in range(5)])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=".").stdout
    assert there.strip() == repr(here)
