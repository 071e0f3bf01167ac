"""huddle's actor runtime: pooled pykka actors, supervision, nodes, test kit.

``from actors import PooledActor, PooledFuture`` gives the pykka runtime;
the rest lives in submodules (``actors.node``, ``actors.actor``,
``actors.supervisor``, ``actors.testkit``).
"""

from actors.runtime import (
    BlockingOnLoop,
    Dispatcher,
    LoopDispatcher,
    PooledActor,
    PooledFuture,
    ThreadPoolDispatcher,
    default_dispatcher,
)

__all__ = [
    "BlockingOnLoop",
    "Dispatcher",
    "LoopDispatcher",
    "PooledActor",
    "PooledFuture",
    "ThreadPoolDispatcher",
    "default_dispatcher",
]
