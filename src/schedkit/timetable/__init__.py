"""Timetables: options, schema, reading, checking cells, runs, recurrence, column batches,
outcomes and frames. Sending is the scheduler's (:mod:`schedkit.scheduler`), never imported
from here."""
