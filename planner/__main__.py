"""``python -m planner`` runs the command line."""

import sys

from planner._launch import main

sys.exit(main())
