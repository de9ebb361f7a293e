"""The gRPC client: ``Client`` and its credentials. It knows nothing of Celery, Redis or
pandas (its two DataFrame methods load ``schedkit.timetable`` on use).

``from schedkit.client import Client`` keeps working from when this was one module.
"""

from schedkit.client.client import Client, Scheduled

__all__ = ["Client", "Scheduled"]
