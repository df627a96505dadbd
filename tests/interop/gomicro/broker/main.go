// A go-micro v5 pub/sub peer on the NATS or RabbitMQ broker, for microweave's interop tests:
//
//	broker -broker nats -address nats://127.0.0.1:4222 -mode publish -topic T -count 3 -header k=v
//	broker -broker rabbitmq -address amqp://guest:guest@127.0.0.1:5672/ -mode subscribe -topic T [-queue Q]
//
// publish: a service publishes -count messages the way go-micro users do,
// micro.NewEvent(topic, service.Client()).Publish(ctx, &Message{...}), each -header in the
// context metadata; one JSON line {"published": n, "topic": T} per Publish that returned nil.
//
// subscribe: a service with micro.RegisterSubscriber(topic, server, handler[, SubscriberQueue]).
// -handler typed (default): func(ctx, *Message) error, the headers read from the context
// metadata go-micro fills in; -handler broker: the service's broker.Subscribe, which sees the
// raw broker event (its Header map and Body bytes). One JSON line per message:
// {"topic": T, "headers": {...}, "body": <the message>[, "raw": "<body bytes>"]}; first a line
// {"ready": true} once the subscription is live. Runs until SIGTERM.
//
// Readiness is measured, not guessed: RabbitMQ subscriptions are declared by a goroutine after
// Subscribe returns, and a NATS SUB may still be in flight. So the peer publishes probes on the
// topic through its own broker (header Micro-Peer-Probe: <id>, body {}) until one comes back to
// its own handler; every peer drops every probe, its own or another's, without printing it.
//
// stdout carries only these JSON lines; go-micro's log goes to stderr (its default logger
// prints to os.Stdout whatever its Out option says, so os.Stdout is pointed at stderr).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go-micro.dev/v5"
	"go-micro.dev/v5/broker"
	natsbroker "go-micro.dev/v5/broker/nats"
	"go-micro.dev/v5/broker/rabbitmq"
	"go-micro.dev/v5/metadata"
	"go-micro.dev/v5/registry"
	"go-micro.dev/v5/server"
)

// Message is the event both directions carry, encoded by go-micro's JSON codec.
type Message struct {
	N    int    `json:"n"`
	From string `json:"from"`
	Text string `json:"text"`
}

// ProbeHeader marks the readiness probes (see the package comment).
const ProbeHeader = "Micro-Peer-Probe"

type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }

func (h headerFlags) Set(value string) error {
	key, val, ok := strings.Cut(value, "=")
	if !ok || key == "" {
		return fmt.Errorf("-header wants key=value, got %q", value)
	}
	h[key] = val
	return nil
}

type options struct {
	broker, address, mode, topic, queue, handler, text string
	count                                              int
	headers                                            headerFlags
	readyTimeout, linger                               time.Duration
}

// out writes one JSON line to the real stdout; handlers run on several goroutines.
var (
	outMu  sync.Mutex
	stdout = os.Stdout
)

func out(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	stdout.Write(append(line, '\n'))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func newBroker(o options) (broker.Broker, error) {
	switch o.broker {
	case "nats":
		return natsbroker.NewNatsBroker(broker.Addrs(o.address)), nil
	case "rabbitmq":
		return rabbitmq.NewBroker(broker.Addrs(o.address)), nil
	}
	return nil, fmt.Errorf("-broker must be nats or rabbitmq, not %q", o.broker)
}

func main() {
	os.Stdout = os.Stderr
	o := options{headers: headerFlags{}}
	fs := flag.NewFlagSet("broker", flag.ExitOnError)
	fs.StringVar(&o.broker, "broker", "", "nats or rabbitmq")
	fs.StringVar(&o.address, "address", "", "nats://host:port or amqp://user:pass@host:port/")
	fs.StringVar(&o.mode, "mode", "", "publish or subscribe")
	fs.StringVar(&o.topic, "topic", "", "the topic")
	fs.StringVar(&o.queue, "queue", "", "subscribe: the queue (group) name")
	fs.StringVar(&o.handler, "handler", "typed", "subscribe: typed (RegisterSubscriber) or broker (raw broker events)")
	fs.StringVar(&o.text, "text", "hello from go-micro", "publish: the text field")
	fs.IntVar(&o.count, "count", 1, "publish: how many messages")
	fs.Var(o.headers, "header", "publish: key=value in the context metadata (repeatable)")
	fs.DurationVar(&o.linger, "linger", time.Second, "publish on rabbitmq: wait this long after the last publish before closing the connection")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 30*time.Second, "subscribe: give up if no probe came back by then")
	_ = fs.Parse(os.Args[1:])
	if o.topic == "" || o.address == "" {
		fail(fmt.Errorf("-topic and -address are required"))
	}

	// Everything go-micro could fall back on is replaced before any service exists: the memory
	// registry (no mDNS) and the requested broker (not the default HTTP broker).
	reg := registry.NewMemoryRegistry()
	registry.DefaultRegistry = reg
	brk, err := newBroker(o)
	if err != nil {
		fail(err)
	}
	broker.DefaultBroker = brk

	switch o.mode {
	case "publish":
		publish(o, reg, brk)
	case "subscribe":
		subscribe(o, reg, brk)
	default:
		fail(fmt.Errorf("-mode must be publish or subscribe, not %q", o.mode))
	}
}

func publish(o options, reg registry.Registry, brk broker.Broker) {
	service := micro.NewService(
		micro.Name("gomicro-publisher"),
		micro.Registry(reg),
		micro.Broker(brk),
		micro.Address("127.0.0.1:0"),
	)
	if err := brk.Connect(); err != nil {
		fail(fmt.Errorf("connecting the %s broker: %w", o.broker, err))
	}
	event := micro.NewEvent(o.topic, service.Client())
	ctx := context.Background()
	if len(o.headers) > 0 {
		ctx = metadata.NewContext(ctx, metadata.Metadata(o.headers))
	}
	for n := 0; n < o.count; n++ {
		msg := &Message{N: n, From: "go-micro", Text: o.text}
		if err := event.Publish(ctx, msg); err != nil {
			fail(fmt.Errorf("publish %d: %w", n, err))
		}
		out(map[string]any{"published": n, "topic": o.topic})
	}
	// go-micro publishes to RabbitMQ without confirms. RabbitMQ 3.10 can drop the last
	// unconfirmed publishes of a channel that closes right after them from the quorum queues
	// they were routed to (classic queues get them all), so linger before closing: otherwise
	// a microweave group (a quorum queue) misses this run's last events now and then.
	if o.broker == "rabbitmq" {
		time.Sleep(o.linger)
	}
	// NATS buffers publishes: Disconnect flushes them before the connection closes.
	if err := brk.Disconnect(); err != nil {
		fail(err)
	}
}

func subscribe(o options, reg registry.Registry, brk broker.Broker) {
	probeID := uuid.NewString()
	ready := make(chan struct{})
	var readyOnce sync.Once
	// seen reports whether msg was a probe (dropped) and notes our own coming back.
	seen := func(headers map[string]string) bool {
		id, isProbe := headers[ProbeHeader]
		if isProbe && id == probeID {
			readyOnce.Do(func() { close(ready) })
		}
		return isProbe
	}

	var service micro.Service
	service = micro.NewService(
		micro.Name("gomicro-subscriber"),
		micro.Registry(reg),
		micro.Broker(brk),
		micro.Address("127.0.0.1:0"),
		micro.AfterStart(func() error {
			if o.handler == "broker" {
				if err := subscribeBroker(o, service.Options().Broker, seen); err != nil {
					return err
				}
			}
			go probe(o, brk, probeID, ready)
			return nil
		}),
	)
	switch o.handler {
	case "typed":
		handler := func(ctx context.Context, msg *Message) error {
			headers, _ := metadata.FromContext(ctx)
			if seen(headers) {
				return nil
			}
			out(map[string]any{"topic": o.topic, "headers": headers, "body": msg})
			return nil
		}
		var opts []server.SubscriberOption
		if o.queue != "" {
			opts = append(opts, server.SubscriberQueue(o.queue))
		}
		if err := micro.RegisterSubscriber(o.topic, service.Server(), handler, opts...); err != nil {
			fail(err)
		}
	case "broker":
		// subscribed in AfterStart, once the service has connected the broker
	default:
		fail(fmt.Errorf("-handler must be typed or broker, not %q", o.handler))
	}
	if err := service.Run(); err != nil {
		fail(err)
	}
}

// subscribeBroker is the broker-level subscription: the event as the broker decoded it.
func subscribeBroker(o options, brk broker.Broker, seen func(map[string]string) bool) error {
	var opts []broker.SubscribeOption
	if o.queue != "" {
		opts = append(opts, broker.Queue(o.queue))
	}
	_, err := brk.Subscribe(o.topic, func(e broker.Event) error {
		msg := e.Message()
		if seen(msg.Header) {
			return nil
		}
		line := map[string]any{"topic": e.Topic(), "headers": msg.Header, "raw": string(msg.Body)}
		var body any
		if json.Unmarshal(msg.Body, &body) == nil {
			line["body"] = body
		}
		out(line)
		return nil
	}, opts...)
	return err
}

// probe publishes probes until one reaches this peer's own handler, then prints ready.
func probe(o options, brk broker.Broker, id string, ready <-chan struct{}) {
	deadline := time.After(o.readyTimeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		msg := &broker.Message{
			Header: map[string]string{"Content-Type": "application/json", ProbeHeader: id},
			Body:   []byte("{}"),
		}
		if err := brk.Publish(o.topic, msg); err != nil {
			fmt.Fprintln(os.Stderr, "probe publish:", err)
		}
		select {
		case <-ready:
			out(map[string]any{"ready": true})
			return
		case <-deadline:
			fail(fmt.Errorf("the subscription on %q was not live after %s", o.topic, o.readyTimeout))
		case <-tick.C:
		}
	}
}
