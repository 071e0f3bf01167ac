"""huddle's actor runtime: pooled pykka actors, supervision, nodes, test kit.

``from actors import PooledActor, PooledFuture`` gives the pykka runtime;
the rest lives in submodules (``actors.runtime.node``, ``actors.runtime.actor``,
``actors.runtime.supervisor``, ``actors.runtime.testkit``).
"""

from actors.runtime.pooled import (
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
