// A gRPC app written with the real Dapr Go SDK (service/grpc), run with
// Perch's --app-protocol grpc (tests/grpc_sdk.rs). It subscribes to
// `orders` (its ListTopicSubscriptions), answers by the event's data: n=2
// RETRY the first time, n=3 DROP, else SUCCESS, and appends each event it
// saw as a JSON line to the file named by GRPC_APP_LOG.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"sync"

	"github.com/dapr/go-sdk/service/common"
	daprd "github.com/dapr/go-sdk/service/grpc"
)

func main() {
	log, err := os.OpenFile(os.Getenv("GRPC_APP_LOG"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		panic(err)
	}
	s, err := daprd.NewService(":" + os.Args[1])
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	seen := map[float64]int{}
	sub := &common.Subscription{PubsubName: "pubsub", Topic: "orders"}
	err = s.AddTopicEventHandler(sub, func(ctx context.Context, e *common.TopicEvent) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		var data map[string]any
		_ = json.Unmarshal(e.RawData, &data)
		n, _ := data["n"].(float64)
		seen[n]++
		answer, retry, failure := "success", false, error(nil)
		if n == 2 && seen[n] == 1 {
			answer, retry, failure = "retry", true, errors.New("try again")
		} else if n == 3 {
			answer, failure = "drop", errors.New("poison")
		}
		line, _ := json.Marshal(map[string]any{"id": e.ID, "n": n, "answer": answer, "path": e.Topic})
		_, _ = log.Write(append(line, '\n'))
		return retry, failure
	})
	if err != nil {
		panic(err)
	}
	// Perch probes it with --enable-app-health-check.
	if err := s.AddHealthCheckHandler("", func(context.Context) error { return nil }); err != nil {
		panic(err)
	}
	if err := s.Start(); err != nil {
		panic(err)
	}
}
