// Package xdsclient is the stand-in's ADS client: one gRPC stream to the control plane, in
// state-of-the-world (StreamAggregatedResources) or incremental (DeltaAggregatedResources) mode,
// subscribing like Envoy does: clusters first, listeners once the first clusters are applied, then
// the route configurations and endpoint assignments the applied resources name. Every response is
// handed to an Applier and ACKed, or NACKed with the Applier's error as error_detail.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resource type URLs.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Applier receives resources from the control plane.
type Applier interface {
	// Apply installs the complete current set of resources of one type (name -> resource). An
	// error rejects the whole update: the previous set stays in force and the update is NACKed.
	Apply(typeURL string, resources map[string]*anypb.Any) error
	// Wanted returns the resource names of a named type (RouteType, EndpointType) that the applied
	// listeners and clusters reference.
	Wanted(typeURL string) []string
}

// Options configure a Client.
type Options struct {
	// Conn is the gRPC connection to the control plane (the bootstrap's ADS cluster); the caller
	// closes it.
	Conn grpc.ClientConnInterface
	// NodeID and NodeCluster identify this data plane.
	NodeID, NodeCluster string
	// NodeOnFirstMessageOnly sends the node in the first request of each stream only (Envoy's
	// set_node_on_first_message_only).
	NodeOnFirstMessageOnly bool
	// Delta selects the incremental protocol.
	Delta bool
	// NodeExtensions is how many entries the node's extensions list has. Envoy lists every
	// extension compiled into it there (name, category, config type URLs; a few hundred in a
	// release build), so its first request is tens of KiB; the names here are made up, their
	// lengths are Envoy's (envoyLikeExtensions). Zero: none, the node is a few dozen bytes.
	NodeExtensions int
	// Applier receives resources.
	Applier Applier
	// Log is the logger.
	Log *slog.Logger
	// RetryInterval is the pause before reconnecting (default 500ms).
	RetryInterval time.Duration
}

// Client keeps an ADS stream open and re-establishes it when it breaks.
type Client struct {
	o     Options
	node  *corev3.Node
	types map[string]*typeState
}

type typeState struct {
	url        string
	named      bool
	subscribed bool
	names      []string
	version    string
	nonce      string
	accepted   map[string]*anypb.Any
	versions   map[string]string
	responded  bool
}

// New returns a Client.
func New(o Options) (*Client, error) {
	var errs []error
	if o.Conn == nil {
		errs = append(errs, errors.New("xds connection is required"))
	}
	if o.NodeID == "" {
		errs = append(errs, errors.New("node id is required"))
	}
	if o.Applier == nil {
		errs = append(errs, errors.New("applier is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = 500 * time.Millisecond
	}
	c := &Client{
		o:     o,
		node:  standinNode(o.NodeID, o.NodeCluster, o.NodeExtensions),
		types: map[string]*typeState{},
	}
	for _, t := range []string{ClusterType, ListenerType, RouteType, EndpointType} {
		c.types[t] = &typeState{url: t, named: t == RouteType || t == EndpointType, accepted: map[string]*anypb.Any{}, versions: map[string]string{}}
	}
	return c, nil
}

// ModelsEnvoy is the Envoy version whose behaviour the stand-in models (listeners in network
// namespaces compared with their namespace, #41103); it reports it as its build version, so that
// cmd/xds judges it as it would judge that Envoy.
var ModelsEnvoy = [3]uint32{1, 36, 0}

func standinNode(id, cluster string, extensions int) *corev3.Node {
	return &corev3.Node{Id: id, Cluster: cluster, UserAgentName: "metaproxy-e2e-standin",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: ModelsEnvoy[0], MinorNumber: ModelsEnvoy[1], Patch: ModelsEnvoy[2]}}},
		Extensions: envoyLikeExtensions(extensions)}
}

// envoyLikeExtensions returns n made-up entries of a node's extensions list shaped as Envoy's
// (source/common/local_info and the extension registry): a name under its category, the category,
// and for three in five the fully qualified name of the extension's config message (Envoy leaves
// type_urls empty for deprecated alias names). Names and type URLs are as long as Envoy's
// (about 35 and 60 bytes), so n entries weigh what n of Envoy's do.
func envoyLikeExtensions(n int) []*corev3.Extension {
	categories := []string{"envoy.filters.http", "envoy.filters.network", "envoy.filters.listener", "envoy.clusters",
		"envoy.transport_sockets.upstream", "envoy.transport_sockets.downstream", "envoy.access_loggers", "envoy.tracers",
		"envoy.matching.http.input", "envoy.upstreams.http.generic"}
	out := make([]*corev3.Extension, n)
	for i := range out {
		cat := categories[i%len(categories)]
		name := fmt.Sprintf("%s.extension_%04d", cat, i)
		e := &corev3.Extension{Name: name, Category: cat}
		if i%5 < 3 {
			e.TypeUrls = []string{fmt.Sprintf("envoy.extensions.%s.v3.ExtensionConfig", strings.TrimPrefix(name, "envoy."))}
		}
		out[i] = e
	}
	return out
}

// Run connects and serves the stream until ctx is done, reconnecting after failures.
func (c *Client) Run(ctx context.Context) error {
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(c.o.Conn)
	for {
		var err error
		if c.o.Delta {
			err = c.runDelta(ctx, ads)
		} else {
			err = c.runSotW(ctx, ads)
		}
		if ctx.Err() != nil {
			return nil
		}
		c.o.Log.Warn("xds stream ended, reconnecting", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.o.RetryInterval):
		}
	}
}

// nodeOnce returns the node to put in a stream's requests: every time, or with
// NodeOnFirstMessageOnly only the first time it is called for the stream.
func (c *Client) nodeOnce() func() *corev3.Node {
	sent := false
	return func() *corev3.Node {
		if c.o.NodeOnFirstMessageOnly && sent {
			return nil
		}
		sent = true
		return c.node
	}
}

// resourceName returns the name of a resource.
func resourceName(a *anypb.Any) (string, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", err
	}
	switch r := m.(type) {
	case *clusterv3.Cluster:
		return r.GetName(), nil
	case *listenerv3.Listener:
		return r.GetName(), nil
	case *routev3.RouteConfiguration:
		return r.GetName(), nil
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName(), nil
	default:
		return "", fmt.Errorf("unexpected resource type %s", a.GetTypeUrl())
	}
}

// wantedChange returns the new subscription of a named type if it changed.
func (c *Client) wantedChange(t *typeState) ([]string, bool) {
	want := slices.Sorted(slices.Values(c.o.Applier.Wanted(t.url)))
	want = slices.Compact(want)
	if len(want) == 0 || (t.subscribed && slices.Equal(want, t.names)) {
		return nil, false
	}
	return want, true
}

func (c *Client) apply(t *typeState, next map[string]*anypb.Any) error {
	if err := c.o.Applier.Apply(t.url, next); err != nil {
		return err
	}
	t.accepted = next
	return nil
}

// ---- state of the world ----

func (c *Client) runSotW(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ads.StreamAggregatedResources(sctx)
	if err != nil {
		return err
	}
	for _, t := range c.types {
		t.nonce = ""
		t.subscribed = false
	}
	node := c.nodeOnce()
	send := func(t *typeState, errDetail error) error {
		req := &discoveryv3.DiscoveryRequest{
			Node: node(), TypeUrl: t.url, VersionInfo: t.version, ResponseNonce: t.nonce, ResourceNames: t.names,
		}
		if errDetail != nil {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: errDetail.Error()}
		}
		t.subscribed = true
		return stream.Send(req)
	}
	// Clusters first; listeners once clusters are in (as Envoy's ADS initialisation does), unless
	// this is a reconnect and listeners were already subscribed.
	if err := send(c.types[ClusterType], nil); err != nil {
		return err
	}
	if c.types[ClusterType].responded {
		if err := send(c.types[ListenerType], nil); err != nil {
			return err
		}
	}
	if err := c.resubscribeSotW(send); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t, ok := c.types[resp.GetTypeUrl()]
		if !ok {
			c.o.Log.Warn("xds response for an unknown type", "type", resp.GetTypeUrl())
			continue
		}
		next, perr := c.sotwResources(t, resp)
		t.nonce = resp.GetNonce()
		if perr == nil {
			perr = c.apply(t, next)
		}
		if perr != nil {
			c.o.Log.Warn("xds NACK", "type", t.url, "version", resp.GetVersionInfo(), "error", perr)
			if err := send(t, perr); err != nil {
				return err
			}
		} else {
			t.version = resp.GetVersionInfo()
			c.o.Log.Info("xds ACK", "type", t.url, "version", t.version, "resources", len(next))
			if err := send(t, nil); err != nil {
				return err
			}
		}
		first := !t.responded
		t.responded = true
		if t.url == ClusterType && first && !c.types[ListenerType].subscribed {
			if err := send(c.types[ListenerType], nil); err != nil {
				return err
			}
		}
		if err := c.resubscribeSotW(send); err != nil {
			return err
		}
	}
}

func (c *Client) resubscribeSotW(send func(*typeState, error) error) error {
	for _, u := range []string{EndpointType, RouteType} {
		t := c.types[u]
		if names, changed := c.wantedChange(t); changed {
			t.names = names
			if err := send(t, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Client) sotwResources(t *typeState, resp *discoveryv3.DiscoveryResponse) (map[string]*anypb.Any, error) {
	next := map[string]*anypb.Any{}
	if t.named {
		// A named type's response carries the requested resources; keep the ones not resent.
		maps.Copy(next, t.accepted)
	}
	for _, a := range resp.GetResources() {
		if a.GetTypeUrl() != t.url {
			return nil, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), t.url)
		}
		name, err := resourceName(a)
		if err != nil {
			return nil, err
		}
		next[name] = a
	}
	if t.named {
		want := map[string]bool{}
		for _, n := range t.names {
			want[n] = true
		}
		for n := range next {
			if !want[n] {
				delete(next, n)
			}
		}
	}
	return next, nil
}

// ---- incremental ----

func (c *Client) runDelta(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ads.DeltaAggregatedResources(sctx)
	if err != nil {
		return err
	}
	for _, t := range c.types {
		t.subscribed = false
	}
	node := c.nodeOnce()
	subscribe := func(t *typeState, sub, unsub []string) error {
		req := &discoveryv3.DeltaDiscoveryRequest{
			Node: node(), TypeUrl: t.url, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub,
		}
		if !t.subscribed && len(t.versions) > 0 {
			req.InitialResourceVersions = maps.Clone(t.versions)
		}
		t.subscribed = true
		return stream.Send(req)
	}
	resubscribe := func() error {
		for _, u := range []string{EndpointType, RouteType} {
			t := c.types[u]
			want, changed := c.wantedChange(t)
			if !changed {
				continue
			}
			var sub, unsub []string
			if t.subscribed {
				for _, n := range want {
					if !slices.Contains(t.names, n) {
						sub = append(sub, n)
					}
				}
				for _, n := range t.names {
					if !slices.Contains(want, n) {
						unsub = append(unsub, n)
					}
				}
			} else {
				sub = want
			}
			t.names = want
			if err := subscribe(t, sub, unsub); err != nil {
				return err
			}
		}
		return nil
	}
	if err := subscribe(c.types[ClusterType], nil, nil); err != nil {
		return err
	}
	if c.types[ClusterType].responded {
		if err := subscribe(c.types[ListenerType], nil, nil); err != nil {
			return err
		}
	}
	if err := resubscribe(); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t, ok := c.types[resp.GetTypeUrl()]
		if !ok {
			c.o.Log.Warn("xds response for an unknown type", "type", resp.GetTypeUrl())
			continue
		}
		next := maps.Clone(t.accepted)
		versions := maps.Clone(t.versions)
		var perr error
		for _, r := range resp.GetResources() {
			if r.GetResource() == nil {
				continue
			}
			if r.GetResource().GetTypeUrl() != t.url {
				perr = fmt.Errorf("resource of type %s in a %s response", r.GetResource().GetTypeUrl(), t.url)
				break
			}
			name := r.GetName()
			if name == "" {
				if name, perr = resourceName(r.GetResource()); perr != nil {
					break
				}
			}
			next[name] = r.GetResource()
			versions[name] = r.GetVersion()
		}
		for _, n := range resp.GetRemovedResources() {
			delete(next, n)
			delete(versions, n)
		}
		if perr == nil {
			perr = c.apply(t, next)
		}
		ack := &discoveryv3.DeltaDiscoveryRequest{Node: node(), TypeUrl: t.url, ResponseNonce: resp.GetNonce()}
		if perr != nil {
			c.o.Log.Warn("xds NACK", "type", t.url, "nonce", resp.GetNonce(), "error", perr)
			ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: perr.Error()}
		} else {
			t.versions = versions
			c.o.Log.Info("xds ACK", "type", t.url, "system_version", resp.GetSystemVersionInfo(), "resources", len(next))
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
		first := !t.responded
		t.responded = true
		if t.url == ClusterType && first && !c.types[ListenerType].subscribed {
			if err := subscribe(c.types[ListenerType], nil, nil); err != nil {
				return err
			}
		}
		if err := resubscribe(); err != nil {
			return err
		}
	}
}
