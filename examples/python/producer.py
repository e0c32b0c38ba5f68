"""Seed 003's producer: publishes task-created events through the Dapr
SDK's DaprClient (gRPC to Perch). The CloudEvent id is the task id
(`cloudevent.id`), so publishing a task twice (a retry after a timeout,
say) is one event for the consumer.

Usage: producer.py TASK_ID TITLE [TASK_ID TITLE ...]
"""

import json
import sys

from dapr.clients import DaprClient

args = sys.argv[1:]
with DaprClient() as client:
    for task_id, title in zip(args[::2], args[1::2]):
        client.publish_event(
            pubsub_name="pubsub",
            topic_name="task-created",
            data=json.dumps({"task_id": task_id, "title": title}),
            data_content_type="application/json",
            publish_metadata={"cloudevent.id": f"task-{task_id}", "cloudevent.type": "com.myapp.task.created"},
        )
        print(f"published task {task_id}", flush=True)
