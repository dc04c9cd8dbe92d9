"""Object stores: files by key."""

from orchestrator.objects.keys import validate_key
from orchestrator.objects.local import LocalObjectStore

__all__ = ["LocalObjectStore", "validate_key"]
