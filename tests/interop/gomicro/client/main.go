// A go-micro v5 gRPC client for microweave's interop tests. It looks a service up in the chosen
// registry the way any go-micro program does and either prints what go-micro decoded
// (-lookup) or calls an endpoint and prints one JSON line: {"reply": ...} (exit 0) or
// {"error": {"id","code","detail","status"}} (exit 1).
//
//	client -registry consul -registry_address 127.0.0.1:8500 -service mw -endpoint Greeter.Hello \
//	       -codec proto -body '{"name":"x"}' -timeout 2s
//
// -codec json sends the body as JSON (x-content-type application/json); -codec proto sends it
// as a greeter.HelloRequest and expects a greeter.HelloReply (application/grpc+proto).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"go-micro.dev/v5/client"
	grpcclient "go-micro.dev/v5/client/grpc"
	"go-micro.dev/v5/errors"
	"go-micro.dev/v5/selector"
	"google.golang.org/protobuf/encoding/protojson"

	"microweave.test/gomicro/peer"
	pb "microweave.test/gomicro/proto"
)

func emit(key string, value any, code int) {
	line, _ := json.Marshal(map[string]any{key: value})
	fmt.Println(string(line))
	os.Exit(code)
}

func main() {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	reg := peer.AddFlags(fs)
	service := fs.String("service", "", "service name to look up")
	endpoint := fs.String("endpoint", "", "Handler.Method")
	codec := fs.String("codec", "json", "json or proto")
	body := fs.String("body", "{}", "request as JSON")
	timeout := fs.Duration("timeout", 5*time.Second, "request timeout (sent as the timeout header too)")
	lookup := fs.Bool("lookup", false, "print the service records go-micro decoded, do not call")
	_ = fs.Parse(os.Args[1:])

	r, err := reg.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	if *lookup {
		services, err := r.GetService(*service)
		if err != nil {
			emit("error", errors.FromError(err), 1)
		}
		emit("services", services, 0)
	}

	sel := selector.NewSelector(selector.Registry(r))
	c := grpcclient.NewClient(client.Registry(r), client.Selector(sel), client.Retries(0))
	opts := []client.CallOption{client.WithRequestTimeout(*timeout), client.WithRetries(0)}

	switch *codec {
	case "json":
		req := c.NewRequest(*service, *endpoint, json.RawMessage(*body), client.WithContentType("application/json"))
		var rsp json.RawMessage
		if err := c.Call(context.Background(), req, &rsp, opts...); err != nil {
			emit("error", errors.FromError(err), 1)
		}
		emit("reply", rsp, 0)
	case "proto":
		in := &pb.HelloRequest{}
		if err := protojson.Unmarshal([]byte(*body), in); err != nil {
			fmt.Fprintln(os.Stderr, "error: -body is not a greeter.HelloRequest:", err)
			os.Exit(2)
		}
		req := c.NewRequest(*service, *endpoint, in, client.WithContentType("application/grpc+proto"))
		out := &pb.HelloReply{}
		if err := c.Call(context.Background(), req, out, opts...); err != nil {
			emit("error", errors.FromError(err), 1)
		}
		text, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(out)
		emit("reply", json.RawMessage(text), 0)
	default:
		fmt.Fprintln(os.Stderr, "error: -codec must be json or proto")
		os.Exit(2)
	}
}
