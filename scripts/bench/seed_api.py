"""The seed design as a benchmark fixture: a Flask endpoint calling apply_async(eta=...).

Run as ``python seed_api.py PORT`` with ``BENCH_REDIS_URL`` set; the client side is
``post_one``: one ``requests.post`` per task, as the seed's scheduler does. Not shipped.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import requests
from fixtures import schedule_celery_task
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/api/schedule_task", methods=["POST"])
def schedule_task() -> Any:
    """The seed's endpoint, unchanged in substance."""
    data = request.get_json()
    args = data.get("args")
    schedule_time = datetime.datetime.strptime(data.get("schedule_time"), "%Y-%m-%d %H:%M:%S")
    result = schedule_celery_task.apply_async(args=args, eta=schedule_time)
    return jsonify({"message": "Task scheduled", "task_id": result.id}), 200


def post_one(url: str, task_name: str, args: list[Any], schedule_time: str) -> None:
    """The seed's scheduler side: one HTTP request per task."""
    data = {"task_name": task_name, "args": args, "schedule_time": schedule_time}
    response = requests.post(url, json=data, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"Failed to schedule task: {response.text}")


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # The seed runs app.run(debug=True); the reloader and debugger are left out here.
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
