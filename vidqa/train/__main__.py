"""``python -m vidqa.train`` (until ``vidqa train`` is a Typer command of its own)."""

import sys

from vidqa.train.main import main

sys.exit(main())
