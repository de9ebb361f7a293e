"""The gRPC client: ``Client`` and its credentials. It knows nothing of Celery, Redis or
pandas (its two DataFrame methods load ``schedkit.timetable`` on use)."""
