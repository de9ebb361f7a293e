"""``python -m schedkit.scheduler timetable.csv``: check a timetable and stream it to the server.

:mod:`.cli` parses the arguments into options; :mod:`.send` reads, sends, syncs and reports.
Safe to re-run (from cron, by hand, or with ``--every``): every run carries an idempotency
key, so a row already scheduled is reported as such and never created twice.
"""

from schedkit.scheduler.cli import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "build_parser", "main"]
