"""Job boards: where producers post jobs and conductors claim them."""

from __future__ import annotations

from aioconductor.boards.base import JobBoard
from aioconductor.boards.open import open_board

__all__ = ["JobBoard", "open_board"]
