"""The Celery side: which tasks and queues may be scheduled, the broker, the dispatcher that
hands tasks off, the worker hook and the worker."""
