// A subscriber and a publisher written with the Dapr Go SDK
// (github.com/dapr/go-sdk): `subscribe` serves service/http on APP_PORT
// (Perch reads its subscription from GET /dapr/subscribe and POSTs each
// order as a CloudEvent); `publish` publishes two orders through the SDK's
// gRPC client (DAPR_GRPC_PORT).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"

	dapr "github.com/dapr/go-sdk/client"
	"github.com/dapr/go-sdk/service/common"
	daprd "github.com/dapr/go-sdk/service/http"
)

type order struct {
	ID   int    `json:"id"`
	Item string `json:"item"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "publish" {
		publish()
		return
	}
	s := daprd.NewService(":" + os.Getenv("APP_PORT"))
	sub := &common.Subscription{PubsubName: "pubsub", Topic: "orders", Route: "/orders"}
	err := s.AddTopicEventHandler(sub, func(ctx context.Context, e *common.TopicEvent) (retry bool, err error) {
		var o order
		if err := json.Unmarshal(e.RawData, &o); err != nil {
			return false, err // not an order: dropped (and dead-lettered)
		}
		fmt.Printf("received order %d: %s\n", o.ID, o.Item)
		return false, nil
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Start(); err != nil {
		log.Fatal(err)
	}
}

func publish() {
	client, err := dapr.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	for _, o := range []order{{1, "perch"}, {2, "sidecar"}} {
		if err := client.PublishEvent(context.Background(), "pubsub", "orders", o); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("published order %d\n", o.ID)
	}
}
