"""Persistence: where engines save flow progress, so a job resumes where it stopped."""

from __future__ import annotations

from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.open import open_store

__all__ = [
    "AtomDetail",
    "AtomState",
    "FlowDetail",
    "FlowState",
    "LogBook",
    "Store",
    "open_store",
]
