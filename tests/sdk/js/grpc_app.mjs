// A gRPC app written with the real Dapr JS SDK (`DaprServer` in gRPC mode),
// run with Perch's --app-protocol grpc (tests/grpc_sdk.rs). It subscribes
// to `orders` (one event per call, OnTopicEvent) and, with `subscribeBulk`,
// to `bulk-orders` (batches: the SDK serves only OnBulkTopicEventAlpha1).
// Both answer by the event's data: n=2 RETRY the first time, n=3 DROP,
// else SUCCESS; each event seen is a JSON line in the file GRPC_APP_LOG.
import { appendFileSync } from "node:fs";
import { CommunicationProtocolEnum, DaprPubSubStatusEnum, DaprServer } from "@dapr/dapr";

const log = process.env.GRPC_APP_LOG;
const seen = new Map();

function answer(data) {
  const n = data?.n;
  seen.set(n, (seen.get(n) ?? 0) + 1);
  let status = DaprPubSubStatusEnum.SUCCESS;
  if (n === 2 && seen.get(n) === 1) status = DaprPubSubStatusEnum.RETRY;
  else if (n === 3) status = DaprPubSubStatusEnum.DROP;
  appendFileSync(log, JSON.stringify({ n, answer: status.toLowerCase() }) + "\n");
  return status;
}

const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: process.argv[2],
  communicationProtocol: CommunicationProtocolEnum.GRPC,
  clientOptions: {
    daprHost: "127.0.0.1",
    daprPort: process.env.DAPR_GRPC_PORT,
    communicationProtocol: CommunicationProtocolEnum.GRPC,
  },
});
await server.pubsub.subscribe("pubsub", "orders", async (data) => answer(data));
await server.pubsub.subscribeBulk("pubsub", "bulk-orders", async (data) => answer(data), {
  maxMessagesCount: 10,
  maxAwaitDurationMs: 50,
});
await server.start();
