// A go-micro v5 service on the gRPC server, for microweave's interop tests:
//
//	server -registry etcd -registry_address 127.0.0.1:2379 -name gogreeter
//
// It serves Greeter.Hello with protobuf types (proto/greeter.proto) and Plain.Add with plain Go
// struct types, registers in the chosen registry, prints one JSON line {"id","address"} once
// registered, and deregisters on SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"go-micro.dev/v5"
	"go-micro.dev/v5/broker"
	"go-micro.dev/v5/errors"
	"go-micro.dev/v5/server"
	grpcserver "go-micro.dev/v5/server/grpc"

	"microweave.test/gomicro/peer"
	pb "microweave.test/gomicro/proto"
)

// Greeter has protobuf request and response types: reachable with application/grpc(+proto).
type Greeter struct{}

func (*Greeter) Hello(ctx context.Context, req *pb.HelloRequest, rsp *pb.HelloReply) error {
	if req.Name == "" {
		return errors.BadRequest("gogreeter", "name is required")
	}
	rsp.Message = "Hello " + req.Name
	rsp.By = "go-micro"
	return nil
}

// AddRequest and AddReply are plain Go structs: go-micro decodes them with the codec the
// HTTP/2 content-type names, so only application/grpc+json reaches this handler.
type AddRequest struct {
	A int `json:"a"`
	B int `json:"b"`
}

type AddReply struct {
	Sum int `json:"sum"`
}

type Plain struct{}

func (*Plain) Add(ctx context.Context, req *AddRequest, rsp *AddReply) error {
	rsp.Sum = req.A + req.B
	return nil
}

func main() {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	reg := peer.AddFlags(fs)
	name := fs.String("name", "gogreeter", "service name")
	version := fs.String("version", "1.2.3", "service version")
	address := fs.String("address", "127.0.0.1:0", "listen address")
	ttl := fs.Duration("ttl", 10*time.Second, "registry TTL (re-registered every TTL/3)")
	_ = fs.Parse(os.Args[1:])

	r, err := reg.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	// the memory broker: go-micro's default http broker listens on every interface
	brk := broker.NewMemoryBroker()
	broker.DefaultBroker = brk
	srv := grpcserver.NewServer(server.Broker(brk))
	var service micro.Service
	service = micro.NewService(
		micro.Server(srv),
		micro.Broker(brk),
		micro.Registry(r),
		micro.Name(*name),
		micro.Version(*version),
		micro.Address(*address),
		micro.Metadata(map[string]string{"peer": "go-micro"}),
		micro.RegisterTTL(*ttl),
		micro.RegisterInterval(*ttl/3),
		micro.AfterStart(func() error {
			opts := service.Server().Options()
			line, _ := json.Marshal(map[string]string{"id": opts.Name + "-" + opts.Id, "address": opts.Address})
			fmt.Println(string(line))
			return nil
		}),
	)
	if err := pb.RegisterGreeterHandler(service.Server(), &Greeter{}); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if err := micro.RegisterHandler(service.Server(), &Plain{}); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if err := service.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
