"""``python -m vidqa``: the ``vidqa`` command (what torchrun launches with ``-m vidqa``)."""

import sys

from vidqa.cli import main

sys.exit(main())
