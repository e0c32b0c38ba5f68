// Drives Perch's gRPC API with the real Dapr Go SDK (tests/grpc_sdk.rs):
// NewClient dials DAPR_GRPC_PORT with WithBlock (5 s), PublishEvent,
// PublishEvents (the stable bulk RPC, Alpha1 on UNIMPLEMENTED). Prints one
// JSON object with what it saw.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	dapr "github.com/dapr/go-sdk/client"
)

func main() {
	out := map[string]any{}
	defer func() {
		b, _ := json.Marshal(out)
		fmt.Println(string(b))
	}()
	client, err := dapr.NewClient()
	if err != nil {
		out["error"] = "NewClient: " + err.Error()
		return
	}
	defer client.Close()
	ctx := context.Background()
	type order struct {
		Go int `json:"go"`
	}
	if err := client.PublishEvent(ctx, "pubsub", "orders", order{Go: 1}); err != nil {
		out["error"] = "PublishEvent: " + err.Error()
		return
	}
	res := client.PublishEvents(ctx, "pubsub", "orders", []any{order{Go: 2}, order{Go: 3}})
	if res.Error != nil {
		out["error"] = "PublishEvents: " + res.Error.Error()
		return
	}
	out["failed"] = len(res.FailedEvents)
	err = client.PublishEvent(ctx, "nope", "orders", order{Go: 4})
	if err == nil {
		out["error"] = "publishing to an unknown pubsub succeeded"
		return
	}
	out["unknown"] = err.Error()
	out["ok"] = os.Getenv("DAPR_GRPC_PORT") != ""
}
