// Drives Perch's gRPC API with the real Dapr JS SDK in gRPC mode
// (tests/grpc_sdk.rs): `client.start()` polls GetMetadata, `publish` is
// PublishEvent, `publishBulk` is BulkPublishEventAlpha1 (its only bulk RPC).
// Prints one JSON object with what it saw.
import { DaprClient, CommunicationProtocolEnum } from "@dapr/dapr";

const client = new DaprClient({
  daprHost: "127.0.0.1",
  daprPort: process.env.DAPR_GRPC_PORT,
  communicationProtocol: CommunicationProtocolEnum.GRPC,
});
const out = {};
try {
  await client.start();
  const md = await client.metadata.get();
  out.id = md.id;
  out.components = md.components.map((c) => c.name).sort();
  out.publish = await client.pubsub.publish("pubsub", "orders", { js: 1 });
  const bulk = await client.pubsub.publishBulk("pubsub", "orders", [{ js: 2 }, "text three"]);
  out.failed = bulk.failedMessages.length;
} catch (e) {
  out.error = String(e);
}
console.log(JSON.stringify(out));
await client.stop();
process.exit(0);
