// Publishes orders with the Dapr JS SDK's `DaprClient` (HTTP, its default).
import { DaprClient } from "@dapr/dapr";

const client = new DaprClient({ daprHost: "127.0.0.1", daprPort: process.env.DAPR_HTTP_PORT });
for (const [id, item] of [[1, "perch"], [2, "sidecar"]]) {
  await client.pubsub.publish("pubsub", "orders", { id, item });
  console.log(`published order ${id}`);
}
