"""Status store adapters. ``CasStatusStore`` holds the rules and the compare-and-swap loop; an
adapter implements its primitives (``_load``, ``_swap``; batched: ``get_docs``, ``_swap_many``)."""

from orchestrator.stores.cas import CasStatusStore
from orchestrator.stores.memory import MemoryStatusStore

__all__ = ["CasStatusStore", "MemoryStatusStore"]
