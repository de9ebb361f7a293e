"""``python -m schedkit``: the same as the ``schedkit`` command."""

from schedkit.cli import main

raise SystemExit(main())
