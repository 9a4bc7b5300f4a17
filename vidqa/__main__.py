import sys

from vidqa.cli import main

sys.exit(main())
