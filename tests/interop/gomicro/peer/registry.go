// Package peer holds what the go-micro test server and client share: the registry choice.
package peer

import (
	"flag"
	"fmt"
	"os"

	"go-micro.dev/v5/registry"
	"go-micro.dev/v5/registry/consul"
	"go-micro.dev/v5/registry/etcd"
	"go-micro.dev/v5/registry/nats"
)

// Flags are the registry flags; their defaults come from go-micro's own environment variables
// (MICRO_REGISTRY, MICRO_REGISTRY_ADDRESS), so either way of choosing works.
type Flags struct {
	Kind    *string
	Address *string
}

func AddFlags(fs *flag.FlagSet) Flags {
	return Flags{
		Kind:    fs.String("registry", os.Getenv("MICRO_REGISTRY"), "etcd, consul or nats (env MICRO_REGISTRY)"),
		Address: fs.String("registry_address", os.Getenv("MICRO_REGISTRY_ADDRESS"), "host:port (env MICRO_REGISTRY_ADDRESS)"),
	}
}

// New builds the chosen registry and makes it go-micro's default, so no component falls back
// to mDNS behind our back.
func (f Flags) New() (registry.Registry, error) {
	var reg registry.Registry
	switch *f.Kind {
	case "etcd":
		reg = etcd.NewEtcdRegistry(registry.Addrs(*f.Address))
	case "consul":
		reg = consul.NewConsulRegistry(registry.Addrs(*f.Address))
	case "nats":
		reg = nats.NewNatsRegistry(registry.Addrs(*f.Address))
	default:
		return nil, fmt.Errorf("-registry must be etcd, consul or nats, not %q", *f.Kind)
	}
	registry.DefaultRegistry = reg
	return reg, nil
}
