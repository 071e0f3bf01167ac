"""What must hold after any run of the cluster counter workload, whatever
was done to the fleet (the chaos benchmarks and the simulation check the
same things, with these functions).

* :func:`additions`: every acknowledged addition is in its counter's final
  state (none lost), and no addition is in a counter twice (none applied
  twice);
* :func:`fencing`: the checkpoint writes Redis accepted for an address,
  in the order it accepted them, never go back to an older epoch, and no
  two nodes wrote under the same epoch (one owner per address and epoch).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

from actors.runtime.builtin import CounterAck

__all__ = ["additions", "fencing"]


def additions(acked: Mapping[str, CounterAck], final: Mapping[str, list[str]],
              tags: set[str] | None = None) -> dict[str, Any]:
    """Lost and duplicated additions (among ``tags`` if given): ``acked``
    maps each acknowledged tag to its acknowledgement, ``final`` each
    counter's address to the tags it holds."""
    violations = []
    lost = 0
    for tag, ack in acked.items():
        if tags is not None and tag not in tags:
            continue
        if tag not in set(final.get(ack.address, ())):
            lost += 1
            if len(violations) < 20:
                violations.append(f"lost: {tag} acknowledged by {ack.address} (epoch {ack.epoch})")
    duplicated = 0
    for address, got in final.items():
        for tag, n in collections.Counter(got).items():
            if n > 1 and (tags is None or tag in tags):
                duplicated += n - 1
                if len(violations) < 40:
                    violations.append(f"duplicated: {tag} applied {n} times at {address}")
    return {"lost": lost, "duplicated": duplicated, "violations": violations}


def fencing(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Violations in a fencing log: entries ``{"a": address, "e": epoch,
    "n": node}`` (bytes or text) in the order Redis accepted the writes."""
    newest: dict[str, int] = {}
    writer: dict[tuple[str, int], str] = {}
    out = []
    for entry in entries:
        fields = {_text(k): _text(v) for k, v in entry.items()}
        address, epoch, node = fields["a"], int(fields["e"]), fields.get("n", "")
        if epoch < newest.get(address, 0):
            out.append(f"fencing log: {address} write under epoch {epoch} accepted after {newest[address]}")
        newest[address] = max(newest.get(address, 0), epoch)
        first = writer.setdefault((address, epoch), node)
        if node and first != node:
            out.append(f"fencing log: {address} epoch {epoch} written by {first} and by {node}")
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
