"""``python -m aioconductor.cli``: the same as the ``aioconductor`` command."""

import sys

from aioconductor.cli import main

sys.exit(main())
