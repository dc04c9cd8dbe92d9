"""Status store adapters. Each implements two primitives over ``CasStatusStore``."""

from orchestrator.stores.cas import CasStatusStore
from orchestrator.stores.memory import MemoryStatusStore

__all__ = ["CasStatusStore", "MemoryStatusStore"]
