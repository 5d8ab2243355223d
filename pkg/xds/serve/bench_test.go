package serve

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xdsstream "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// fleet returns nodes x perNode networks, every network on one node (as `loadgen xds` makes them
// with one agent per network); extra adds one more network to every node.
func fleet(nodes, perNode int, extra bool) source.Nodes {
	out := make(source.Nodes, nodes)
	for i := range nodes {
		n := perNode
		if extra {
			n++
		}
		nets := make([]source.Network, n)
		for j := range nets {
			k := i*(perNode+1) + j
			id := benchNetworkID(k)
			nets[j] = source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: source.NamespacePath(source.DefaultNetnsDir, resolve.KindNetwork, id)}
		}
		out[fmt.Sprintf("node-%05d", i)] = nets
	}
	return out
}

// benchNetworkID is the id of network k: a version 4 UUID with random-looking digits (a hash of
// k), as Neutron's are, so that listeners differ from each other where real ones do.
func benchNetworkID(k int) string {
	r := rand.New(rand.NewPCG(uint64(k), 15))
	a, b := r.Uint64(), r.Uint64()
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", a>>32, a>>16&0xffff, a&0xfff, b>>48&0x3fff|0x8000, b&0xffffffffffff)
}

// BenchmarkApply measures one poll's work in Snapshots.Apply for fleets of the sizes `loadgen
// xds` runs, without clients: "first" is a fresh cmd/xds (every network translated), "unchanged"
// a poll that finds nothing new, "one-node" one network added on one node, "every-node" one
// network added on every node (what `loadgen xds` changes). live-B/listener is the heap kept per
// listener once the fleet is applied.
func BenchmarkApply(b *testing.B) {
	for _, size := range []struct{ nodes, perNode int }{{1000, 100}, {5000, 10}} {
		before, after := fleet(size.nodes, size.perNode, false), fleet(size.nodes, size.perNode, true)
		oneNode := make(source.Nodes, len(before))
		for n, nets := range before {
			oneNode[n] = nets
		}
		oneNode["node-00000"] = after["node-00000"]
		listeners := size.nodes * size.perNode
		name := fmt.Sprintf("%dx%d", size.nodes, size.perNode)
		sh := newShared(b)
		ctx := context.Background()
		apply := func(b *testing.B, s *Snapshots, nodes source.Nodes) {
			if err := s.Apply(ctx, sh, nodes); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(name+"/first", func(b *testing.B) {
			b.ReportAllocs()
			var live uint64
			for b.Loop() {
				b.StopTimer()
				s := NewSnapshots(nil)
				var m0, m1 runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&m0)
				b.StartTimer()
				apply(b, s, before)
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&m1)
				live = m1.HeapAlloc - m0.HeapAlloc
				runtime.KeepAlive(s)
				b.StartTimer()
			}
			b.ReportMetric(float64(live)/float64(listeners), "live-B/listener")
		})
		for _, tc := range []struct {
			name string
			next source.Nodes
		}{{"unchanged", before}, {"one-node", oneNode}, {"every-node", after}} {
			b.Run(name+"/"+tc.name, func(b *testing.B) {
				s := NewSnapshots(nil)
				apply(b, s, before)
				b.ReportAllocs()
				for b.Loop() {
					apply(b, s, tc.next)
					b.StopTimer()
					apply(b, s, before) // back, for the next round
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkXDSResponse measures what go-control-plane's snapshot cache costs to answer one Envoy of
// a node with 100 networks, state of the world and delta, from the request to the marshaled
// response (what the xDS server then hands to gRPC).
func BenchmarkXDSResponse(b *testing.B) {
	s := NewSnapshots(nil)
	nodes := fleet(1, 100, false)
	if err := s.Apply(context.Background(), newShared(b), nodes); err != nil {
		b.Fatal(err)
	}
	node := &corev3.Node{Id: "node-00000"}
	b.Run("sotw-listeners", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			resp, err := s.Cache().Fetch(context.Background(), &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := resp.GetDiscoveryResponse(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("delta-listeners", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ch := make(chan cache.DeltaResponse, 1)
			req := &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}
			if _, err := s.Cache().CreateDeltaWatch(req, xdsstream.NewDeltaSubscription(nil, nil, nil, true), ch); err != nil {
				b.Fatal(err)
			}
			if _, err := (<-ch).GetDeltaDiscoveryResponse(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkListenerForm compares the two forms a listener can be handed to go-control-plane in:
// "plain", the *listenerv3.Listener translate builds, which go-control-plane's cache.Snapshot
// holds and marshals for every response, and "served", the encoding kept once (served). Per form:
// the heap kept per listener (10k networks), and what the snapshot cache costs to answer one
// state-of-the-world or delta Envoy of a node with 100 networks, up to the bytes the xDS server's codec
// hands to gRPC (what a change costs per node, and what a response in flight holds).
func BenchmarkListenerForm(b *testing.B) {
	sh := newShared(b)
	many := fleet(100, 100, false)
	var nets []source.Network
	for _, ns := range many {
		nets = append(nets, ns...)
	}
	cm, err := newCommon(sh.Clusters(), sh.Routes())
	if err != nil {
		b.Fatal(err)
	}
	plainOf := func(nets []source.Network) []types.Resource {
		var out []types.Resource
		for _, n := range nets {
			ls, err := sh.Listeners(n)
			if err != nil {
				b.Fatal(err)
			}
			for _, l := range ls {
				out = append(out, l)
			}
		}
		return out
	}
	servedOf := func(nets []source.Network) []types.Resource {
		var out []types.Resource
		for _, n := range nets {
			ls, err := buildNetwork(sh, cm, n)
			if err != nil {
				b.Fatal(err)
			}
			for _, l := range ls {
				out = append(out, l)
			}
		}
		return out
	}
	forms := []struct {
		name  string
		build func([]source.Network) []types.Resource
	}{{"plain", plainOf}, {"served", servedOf}}
	for _, f := range forms {
		b.Run(f.name+"/kept", func(b *testing.B) {
			var perListener float64
			for b.Loop() {
				var m0, m1 runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&m0)
				kept := f.build(nets)
				runtime.GC()
				runtime.ReadMemStats(&m1)
				perListener = float64(m1.HeapAlloc-m0.HeapAlloc) / float64(len(kept))
				runtime.KeepAlive(kept)
			}
			b.ReportMetric(perListener, "live-B/listener")
		})
	}
	node := &corev3.Node{Id: "n"}
	one := nets[:100]
	plainSnap, err := cache.NewSnapshot("1", map[resource.Type][]types.Resource{
		resource.ListenerType: plainOf(one),
		resource.RouteType:    {sh.Routes()[0]},
		resource.ClusterType:  {sh.Clusters()[0], sh.Clusters()[1]},
	})
	if err != nil {
		b.Fatal(err)
	}
	plain := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	if err := plain.SetSnapshot(context.Background(), "n", plainSnap); err != nil {
		b.Fatal(err)
	}
	served := NewSnapshots(nil)
	if err := served.Apply(context.Background(), sh, source.Nodes{"n": one}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		cache cache.SnapshotCache
	}{{"plain", plain}, {"served", served.Cache()}} {
		b.Run(c.name+"/sotw-response", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.cache.Fetch(context.Background(), &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType})
				if err != nil {
					b.Fatal(err)
				}
				out, err := resp.GetDiscoveryResponse()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := newCodec().Marshal(out); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/delta-response", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ch := make(chan cache.DeltaResponse, 1)
				req := &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}
				if _, err := c.cache.CreateDeltaWatch(req, xdsstream.NewDeltaSubscription(nil, nil, nil, true), ch); err != nil {
					b.Fatal(err)
				}
				out, err := (<-ch).GetDeltaDiscoveryResponse()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := newCodec().Marshal(out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
