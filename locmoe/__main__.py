"""``python -m locmoe`` = the ``locmoe`` command."""

import sys

from locmoe.cli import main

sys.exit(main())
