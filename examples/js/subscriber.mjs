// A subscriber written with the Dapr JS SDK (`DaprServer`, HTTP): Perch
// finds its subscription through GET /dapr/subscribe and POSTs each order
// as a CloudEvent; the SDK hands the handler the event's data.
import { DaprServer } from "@dapr/dapr";

const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: process.env.APP_PORT,
  clientOptions: { daprHost: "127.0.0.1", daprPort: process.env.DAPR_HTTP_PORT },
});
await server.pubsub.subscribe("pubsub", "orders", async (order) => {
  console.log(`received order ${order.id}: ${order.item}`);
});
await server.start();
