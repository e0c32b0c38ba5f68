// Drives Perch's gRPC API with the real Dapr Java SDK (tests/grpc_sdk.rs):
// DaprClientBuilder().build() (gRPC, DAPR_GRPC_PORT), publishEvent, and the
// preview client's publishEvents (1.16: bulk publish is preview). Prints one
// JSON object with what it saw.
import io.dapr.client.DaprClient;
import io.dapr.client.DaprClientBuilder;
import io.dapr.client.DaprPreviewClient;
import io.dapr.client.domain.BulkPublishResponse;
import java.util.List;
import java.util.Map;

public class Publisher {
  public static void main(String[] args) {
    String out;
    try (DaprClient client = new DaprClientBuilder().build();
         DaprPreviewClient preview = new DaprClientBuilder().buildPreviewClient()) {
      client.publishEvent("pubsub", "orders", Map.of("java", 1)).block();
      BulkPublishResponse<Map<String, Integer>> r = preview
          .publishEvents("pubsub", "orders", "application/json", List.of(Map.of("java", 2), Map.of("java", 3)))
          .block();
      out = "{\"ok\":true,\"failed\":" + r.getFailedEntries().size() + "}";
    } catch (Exception e) {
      out = "{\"error\":\"" + e.toString().replace("\\", "\\\\").replace("\"", "'") + "\"}";
    }
    System.out.println(out);
    System.exit(0);
  }
}
