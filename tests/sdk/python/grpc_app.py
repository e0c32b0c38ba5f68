"""A gRPC app written with the real Dapr Python SDK (dapr.ext.grpc.App), run
with Perch's --app-protocol grpc (tests/grpc_sdk.rs). It subscribes to
GRPC_APP_TOPIC (default `orders`, dead letters to `<topic>-dead`) in its
ListTopicSubscriptions, answers events by their data: n=2
RETRY the first time, n=3 DROP, else SUCCESS; and writes each event it saw
as a JSON line to the file named by GRPC_APP_LOG.
"""

import json
import os
import sys

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App

app = App()
seen = {}
log = open(os.environ["GRPC_APP_LOG"], "a", buffering=1)


topic = os.environ.get("GRPC_APP_TOPIC", "orders")


@app.subscribe(pubsub_name="pubsub", topic=topic, dead_letter_topic=f"{topic}-dead")
def orders(event: v1.Event) -> TopicEventResponse:
    data = json.loads(event.Data()) if isinstance(event.Data(), (bytes, str)) else event.Data()
    n = data.get("n")
    seen[n] = seen.get(n, 0) + 1
    if n == 2 and seen[n] == 1:
        answer = "retry"
    elif n == 3:
        answer = "drop"
    else:
        answer = "success"
    log.write(json.dumps({"id": event.EventID(), "n": n, "answer": answer, "type": event.EventType()}) + "\n")
    return TopicEventResponse(answer)


app.register_health_check(lambda: None)
app.run(int(sys.argv[1]))
