"""``python -m schedkit.scheduler``: the exit code is main()'s."""

import sys

from schedkit.scheduler.cli import main

sys.exit(main())
