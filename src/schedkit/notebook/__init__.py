"""Notebook helpers: build, submit, inspect and cancel schedules from Jupyter.

::

    from schedkit.notebook import ScheduleBuilder, ScheduleInspector, timeline

    ScheduleBuilder(client)                  # a form; .frame is the draft, .results the outcome
    ScheduleInspector(client, tz="Europe/Paris")  # live grid, paged; select, cancel, details
    timeline(client.tasks_frame())           # a matplotlib Figure of planned and actual runs

Core ipywidgets, and itables' grid widget for the inspector. Every widget shows its own
errors (and the traceback of unexpected ones) in itself, never only in the kernel log.
``import schedkit`` does not import this module, ipywidgets, itables or matplotlib.
"""

from schedkit.notebook.builder import ScheduleBuilder
from schedkit.notebook.inspector import ScheduleInspector
from schedkit.notebook.timeline import timeline

__all__ = ["ScheduleBuilder", "ScheduleInspector", "timeline"]
