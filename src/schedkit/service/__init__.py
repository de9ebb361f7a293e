"""The server side: the schedules use case, the asyncio servicer, its interceptors and
bounds, watching, authentication and the server itself."""
