"""Seed 003's task consumer, without its hand-written idempotency: no
is_processed / mark_processed table. Perch claims each event id in its
idempotency store before calling this handler, so a re-published or
redelivered task arrives once; the key it claimed comes as the
`idempotency-key` header.

Subscribes programmatically (GET /dapr/subscribe, through the Dapr SDK's
FastAPI extension) to `task-created` on the `pubsub` component.
"""

from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI, Header

app = FastAPI()
dapr_app = DaprApp(app)


@dapr_app.subscribe(pubsub="pubsub", topic="task-created", route="/events/task-created")
def task_created(event=Body(), idempotency_key: str | None = Header(default=None)):
    task = event["data"]
    print(f"processed task {task['task_id']} ({task['title']}), event {event['id']}", flush=True)
    return {"status": "SUCCESS"}


@app.get("/health")
def health():
    return {}
