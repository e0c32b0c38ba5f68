"""Drives Perch's gRPC API with the real Dapr Python SDK (tests/grpc_sdk.rs).

Usage: client.py <case> [args...]; prints one JSON object per line with what
the SDK returned or raised. The SDK finds the sidecar through DAPR_HTTP_PORT
(its start-up health wait) and DAPR_GRPC_PORT, as an app would.
"""

import json
import sys

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError


def out(**kw):
    print(json.dumps(kw), flush=True)


def error(e):
    code = e.code() if callable(getattr(e, "code", None)) else None
    reason = e.error_code() if isinstance(e, DaprGrpcError) else None
    out(error=str(code.name) if code else type(e).__name__, reason=reason, message=str(e.details() if hasattr(e, "details") else e))


def main():
    case, args = sys.argv[1], sys.argv[2:]
    with DaprClient() as c:
        try:
            if case == "publish":
                pubsub, topic, data, ct = args[0], args[1], args[2], args[3]
                md = json.loads(args[4]) if len(args) > 4 else {}
                c.publish_event(pubsub_name=pubsub, topic_name=topic, data=data,
                                data_content_type=ct or None, publish_metadata=md)
                out(ok=True)
            elif case == "bulk":
                pubsub, topic = args[0], args[1]
                events = json.loads(args[2])
                r = c.publish_events(pubsub_name=pubsub, topic_name=topic, data=events,
                                     data_content_type="application/json")
                out(ok=True, failed=[f.entry_id for f in r.failed_entries])
            elif case == "metadata":
                m = c.get_metadata()
                out(ok=True, id=m.application_id,
                    components=sorted(x.name for x in m.registered_components),
                    types=sorted(x.type for x in m.registered_components),
                    extended=dict(m.extended_metadata))
            elif case == "set_metadata":
                c.set_metadata(args[0], args[1])
                out(ok=True)
            elif case == "state":
                c.save_state(store_name="statestore", key="k", value="v")
                out(ok=True)
            elif case == "stream":
                # Streaming subscription: answers the n-th message with the
                # n-th action of the plan (success, retry, drop, or close:
                # end the stream without answering), then closes.
                pubsub, topic, plan = args[0], args[1], json.loads(args[2])
                dead = args[3] if len(args) > 3 else None
                sub = c.subscribe(pubsub_name=pubsub, topic=topic, dead_letter_topic=dead)
                print(json.dumps({"subscribed": True}), flush=True)
                seen = []
                for action in plan:
                    m = sub.next_message()
                    if m is None:
                        continue
                    seen.append({"id": m.id(), "data": m.data(), "action": action})
                    if action == "success":
                        sub.respond_success(m)
                    elif action == "retry":
                        sub.respond_retry(m)
                    elif action == "drop":
                        sub.respond_drop(m)
                    elif action == "close":
                        break
                # Let the last answer leave before the stream closes.
                import time
                time.sleep(0.5)
                sub.close()
                out(ok=True, seen=seen)
            elif case == "shutdown":
                c.shutdown()
                out(ok=True)
            else:
                raise SystemExit(f"unknown case {case}")
        except Exception as e:  # the test reads what the SDK raised
            error(e)


if __name__ == "__main__":
    main()
