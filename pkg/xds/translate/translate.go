package translate

import (
	"fmt"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// RouteName is the route configuration every listener's HTTP connection manager asks for over RDS.
// All listeners share it: the route is the same for every network (everything to nova_metadata),
// what differs per network lives in the listener's ext_proc filter.
const RouteName = "metadata"

// Resources are the Envoy resources of one node, each list sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
}

// Shared are the resources that do not depend on the node: the clusters and the route, and what
// the listeners of all networks share (the HTTP connection manager but for the network's ext_proc
// filter and stat prefix). Build them once with NewShared and reuse them for every node and
// network; safe for concurrent use.
type Shared struct {
	settings Settings
	clusters []*clusterv3.Cluster
	route    *routev3.RouteConfiguration
	hcm      *hcmShared
}

// NewShared validates s and builds the node-independent resources.
func NewShared(s Settings) (*Shared, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	nova, err := NovaCluster(s)
	if err != nil {
		return nil, err
	}
	ext, err := ExtProcCluster(s)
	if err != nil {
		return nil, err
	}
	route, err := RouteConfiguration(s)
	if err != nil {
		return nil, err
	}
	clusters := []*clusterv3.Cluster{nova, ext}
	tracing, err := hcmTracing(s.EnvoyTracing)
	if err != nil {
		return nil, err
	}
	if tracing != nil {
		otel, err := OTelCollectorCluster(s.EnvoyTracing)
		if err != nil {
			return nil, err
		}
		clusters = append(clusters, otel)
	}
	rateLimit := map[ipVersion]*anypb.Any{}
	if s.RateLimit.Enabled {
		f, err := localRateLimitFilter(s.RateLimit)
		if err != nil {
			return nil, err
		}
		for _, v := range s.RateLimit.IPVersions {
			rateLimit[ipVersion(v)] = f
		}
	}
	hcm, err := newHCMShared(s.Timeouts, rateLimit, tracing)
	if err != nil {
		return nil, err
	}
	return &Shared{settings: s, clusters: sortByName(clusters), route: route, hcm: hcm}, nil
}

// Clusters returns the clusters every node gets, sorted by name. They are built once by NewShared:
// callers must not modify them.
func (sh *Shared) Clusters() []*clusterv3.Cluster { return sh.clusters }

// Routes returns the route configurations of a node with listeners (the one RouteName every
// listener names). Built once by NewShared: callers must not modify them.
func (sh *Shared) Routes() []*routev3.RouteConfiguration {
	return []*routev3.RouteConfiguration{sh.route}
}

// Node returns the resources of a node serving nets: Clusters, the Listeners of every network and,
// when there is at least one listener, Routes. A node without networks gets the clusters only (no
// listeners, so no route either): Envoy drops the old listeners, keeps its clusters warm, and the
// snapshot stays consistent.
//
// Node translates every network each time, one after the other; package serve calls Listeners
// once per distinct network instead, on all CPUs, and keeps the result.
func (sh *Shared) Node(nets []source.Network) (Resources, error) {
	res := Resources{Clusters: sh.clusters}
	for _, n := range nets {
		ls, err := sh.Listeners(n)
		if err != nil {
			return Resources{}, fmt.Errorf("%s %s: %w", n.Kind, n.ID, err)
		}
		res.Listeners = append(res.Listeners, ls...)
	}
	if len(res.Listeners) > 0 {
		res.Routes = sh.Routes()
	}
	res.Listeners = sortByName(res.Listeners)
	for i := 1; i < len(res.Listeners); i++ {
		if res.Listeners[i].GetName() == res.Listeners[i-1].GetName() {
			return Resources{}, fmt.Errorf("duplicate listener %s", res.Listeners[i].GetName())
		}
	}
	return res, nil
}

type named interface {
	proto.Message
	GetName() string
}

func sortByName[T named](items []T) []T {
	sort.Slice(items, func(i, j int) bool { return items[i].GetName() < items[j].GetName() })
	return items
}
