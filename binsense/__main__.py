"""``python -m binsense`` runs the command line."""

import sys

from binsense.cli import main

sys.exit(main())
