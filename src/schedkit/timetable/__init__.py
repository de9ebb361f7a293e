"""Timetables: reading and checking them, recurrence, column batches, outcomes, frames and
sending them to a server."""
