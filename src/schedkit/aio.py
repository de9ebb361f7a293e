"""schedkit for asyncio: ``schedkit.aio.Client`` has the methods of :class:`schedkit.Client`,
awaited, on ``grpc.aio`` (``tasks``, ``watch`` and ``schedule_many`` are async iterators)::

    async with schedkit.aio.Client.connect("127.0.0.1:50051") as client:
        task = await client.schedule("add", 1, 2, run_at=timedelta(seconds=5))
        done = await client.wait_for(task.id, ["SUCCEEDED"])

It raises the same :class:`schedkit.SchedkitError` classes and takes the same token and TLS
options. The public names are listed in ``__all__``; a test pins the list.
"""

from schedkit.client.aio import Client
from schedkit.client.aio_watch import Watch

__all__ = ["Client", "Watch"]
