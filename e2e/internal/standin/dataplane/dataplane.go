// Package dataplane applies xDS resources to the stand-in's running state: it validates clusters,
// endpoint assignments, route configurations and listeners, binds listeners (inside their network
// namespace) when they appear, rebinds them when their address changes, swaps their HTTP handling
// in place when only the filters or routes change, and closes them when they are removed.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/cluster"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/hcm"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/netnslisten"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
)

const hcmFilterName = "envoy.filters.network.http_connection_manager"
const hcmType = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

// DataPlane is the stand-in's live configuration.
type DataPlane struct {
	log      *slog.Logger
	stats    *hcm.Stats
	clusters *cluster.Manager

	mu         sync.Mutex
	clusterCfg map[string]*cluster.Config
	clusterKey map[string]string
	endpoints  map[string][]cluster.Endpoint
	listeners  map[string]*listenerSpec
	running    map[string]*runningListener
	// bound are the sockets of listeners added or rebound and not serving yet (warming: their
	// route configuration has not arrived), opened when the listener was applied, as Envoy does.
	bound  map[string][]net.Listener
	routes atomic.Pointer[map[string]*hcm.RouteTable]
	// unnamedSince is when each route table no listener names stopped being named (pruneRoutes).
	unnamedSince map[string]time.Time
	now          func() time.Time
	versions     map[string]int

	readyOnce sync.Once
	ready     chan struct{}
}

var _ xdsclient.Applier = (*DataPlane)(nil)

// New returns an empty DataPlane.
func New(log *slog.Logger, stats *hcm.Stats) *DataPlane {
	d := &DataPlane{
		log: log, stats: stats, clusters: cluster.NewManager(),
		clusterCfg: map[string]*cluster.Config{}, clusterKey: map[string]string{},
		endpoints: map[string][]cluster.Endpoint{}, listeners: map[string]*listenerSpec{},
		running: map[string]*runningListener{}, bound: map[string][]net.Listener{}, versions: map[string]int{}, ready: make(chan struct{}),
		unnamedSince: map[string]time.Time{}, now: time.Now,
	}
	empty := map[string]*hcm.RouteTable{}
	d.routes.Store(&empty)
	return d
}

// Ready is closed once the first listener update has been applied.
func (d *DataPlane) Ready() <-chan struct{} { return d.ready }

// Stats returns the counters.
func (d *DataPlane) Stats() *hcm.Stats { return d.stats }

func (d *DataPlane) env() *hcm.Env {
	return &hcm.Env{
		Clusters: d.clusters,
		RouteTable: func(name string) *hcm.RouteTable {
			return (*d.routes.Load())[name]
		},
		Stats: d.stats,
		Log:   d.log,
	}
}

// Wanted implements xdsclient.Applier.
func (d *DataPlane) Wanted(typeURL string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	switch typeURL {
	case xdsclient.RouteType:
		for _, l := range d.listeners {
			if l.hcm.RDSName != "" {
				out = append(out, l.hcm.RDSName)
			}
		}
	case xdsclient.EndpointType:
		for _, c := range d.clusterCfg {
			if c.EDSServiceName != "" {
				out = append(out, c.EDSServiceName)
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// Apply implements xdsclient.Applier.
func (d *DataPlane) Apply(typeURL string, res map[string]*anypb.Any) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	switch typeURL {
	case xdsclient.ClusterType:
		err = d.applyClusters(res)
	case xdsclient.EndpointType:
		err = d.applyEndpoints(res)
	case xdsclient.RouteType:
		err = d.applyRoutes(res)
	case xdsclient.ListenerType:
		err = d.applyListeners(res)
		d.readyOnce.Do(func() { close(d.ready) })
	default:
		err = fmt.Errorf("resource type %s is not supported by the stand-in", typeURL)
	}
	if err != nil {
		d.stats.Inc("xds." + shortType(typeURL) + ".update_rejected")
		return err
	}
	d.stats.Inc("xds." + shortType(typeURL) + ".update_success")
	d.versions[typeURL]++
	return nil
}

func shortType(u string) string {
	switch u {
	case xdsclient.ClusterType:
		return "cds"
	case xdsclient.ListenerType:
		return "lds"
	case xdsclient.RouteType:
		return "rds"
	case xdsclient.EndpointType:
		return "eds"
	}
	return "unknown"
}

func (d *DataPlane) applyClusters(res map[string]*anypb.Any) error {
	cfgs := map[string]*cluster.Config{}
	keys := map[string]string{}
	var errs []error
	for name, a := range res {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
			continue
		}
		cfg, err := cluster.Parse(&c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&c)
		cfgs[cfg.Name], keys[cfg.Name] = cfg, string(b)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.clusterCfg, d.clusterKey = cfgs, keys
	d.pushClusters()
	return nil
}

// pushClusters installs the clusters, EDS ones with their current endpoints.
func (d *DataPlane) pushClusters() {
	cfgs := make(map[string]*cluster.Config, len(d.clusterCfg))
	keys := make(map[string]string, len(d.clusterCfg))
	for name, c := range d.clusterCfg {
		keys[name] = d.clusterKey[name]
		if c.EDSServiceName != "" {
			cc := *c
			cc.Endpoints = d.endpoints[c.EDSServiceName]
			c = &cc
			keys[name] += fmt.Sprint(cc.Endpoints)
		}
		cfgs[name] = c
	}
	d.clusters.Update(cfgs, keys)
}

func (d *DataPlane) applyEndpoints(res map[string]*anypb.Any) error {
	eps := map[string][]cluster.Endpoint{}
	var errs []error
	for name, a := range res {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			errs = append(errs, fmt.Errorf("assignment %s: %w", name, err))
			continue
		}
		e, err := cluster.Endpoints(&cla)
		if err != nil {
			errs = append(errs, fmt.Errorf("assignment %s: %w", name, err))
			continue
		}
		eps[cla.GetClusterName()] = e
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.endpoints = eps
	d.pushClusters()
	return nil
}

// applyRoutes takes the route configurations of an RDS update. As in Envoy, a route configuration
// the server leaves out or removes is kept: Envoy's RdsRouteConfigSubscription ignores a delta
// removal ("attempting to remove a resource ... Ignoring") and a state-of-the-world update without
// the resource (validateUpdateSize: update_empty), source/common/rds/rds_route_config_subscription.cc.
// A route configuration goes away with the last listener that uses it, draining ones included
// (pruneRoutes); until then a removed listener's open connections keep their routes.
func (d *DataPlane) applyRoutes(res map[string]*anypb.Any) error {
	tables := maps.Clone(*d.routes.Load())
	var errs []error
	for name, a := range res {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			errs = append(errs, fmt.Errorf("route config %s: %w", name, err))
			continue
		}
		t, err := hcm.ParseRouteTable(&rc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tables[rc.GetName()] = t
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.routes.Store(&tables)
	d.reconcile()
	return nil
}

// routeLinger is how long a route table no listener names is kept: the longest a removed
// listener's connections still answer requests (drainTime, then the shutdown's 5 s).
const routeLinger = drainTime + 5*time.Second

// pruneRoutes drops the route tables no listener has named for routeLinger, as Envoy destroys a
// route configuration provider with the last (draining) listener holding it. It runs with every
// update: the update that removes a table's last listener starts the linger (lazily: a table may
// outlive its listeners a little longer, never less).
func (d *DataPlane) pruneRoutes() {
	now := d.now()
	named := map[string]bool{}
	for _, l := range d.listeners {
		named[l.hcm.RDSName] = true
	}
	cur := *d.routes.Load()
	var kept map[string]*hcm.RouteTable
	for name := range cur {
		since, unnamed := d.unnamedSince[name]
		switch {
		case named[name]:
			delete(d.unnamedSince, name)
		case !unnamed:
			d.unnamedSince[name] = now
		case now.Sub(since) > routeLinger:
			if kept == nil {
				kept = maps.Clone(cur)
			}
			delete(kept, name)
			delete(d.unnamedSince, name)
		}
	}
	if kept != nil {
		d.routes.Store(&kept)
	}
}

// listenerSpec is a parsed listener.
type listenerSpec struct {
	name    string
	proto   *listenerv3.Listener
	sockets []netnslisten.Spec
	hcm     *hcm.Config
}

// bindKey identifies the sockets and server settings of a listener; a change means rebinding.
func (l *listenerSpec) bindKey() string {
	return fmt.Sprint(l.sockets, l.hcm.HTTP2, l.hcm.RequestTimeout, l.hcm.RequestHeadersTimeout, l.hcm.StreamIdleTimeout, l.hcm.IdleTimeout)
}

func parseListener(l *listenerv3.Listener) (*listenerSpec, error) {
	spec := &listenerSpec{name: l.GetName(), proto: l}
	if spec.name == "" {
		return nil, errors.New("listener without a name")
	}
	if len(l.GetListenerFilters()) > 0 || l.GetUseOriginalDst().GetValue() || l.GetApiListener() != nil || l.GetInternalListener() != nil ||
		l.GetTransparent().GetValue() || l.GetFilterChainMatcher() != nil {
		return nil, errors.New("listener_filters, use_original_dst, api/internal listeners, transparent and filter_chain_matcher are not supported by the stand-in")
	}
	freebind := l.GetFreebind().GetValue()
	// Envoy sets SO_REUSEPORT on listener sockets unless enable_reuse_port is false (it defaults
	// to true on Linux), so a listener can be bound beside another process's, e.g. haproxy's.
	reusePort := l.GetEnableReusePort() == nil || l.GetEnableReusePort().GetValue()
	opts, err := socketOptions(l.GetSocketOptions())
	if err != nil {
		return nil, err
	}
	s, err := socketSpec(l.GetAddress(), freebind, opts)
	if err != nil {
		return nil, err
	}
	s.ReusePort = reusePort
	spec.sockets = append(spec.sockets, s)
	for _, aa := range l.GetAdditionalAddresses() {
		aopts := opts
		if aa.GetSocketOptions() != nil {
			if aopts, err = socketOptions(aa.GetSocketOptions().GetSocketOptions()); err != nil {
				return nil, fmt.Errorf("additional address: %w", err)
			}
		}
		s, err := socketSpec(aa.GetAddress(), freebind, aopts)
		if err != nil {
			return nil, fmt.Errorf("additional address: %w", err)
		}
		s.ReusePort = reusePort
		spec.sockets = append(spec.sockets, s)
	}
	chains := l.GetFilterChains()
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains[:len(chains):len(chains)], l.GetDefaultFilterChain())
	}
	if len(chains) != 1 {
		return nil, fmt.Errorf("the stand-in supports exactly one filter chain, got %d", len(chains))
	}
	fc := chains[0]
	if fc.GetFilterChainMatch() != nil && !proto.Equal(fc.GetFilterChainMatch(), &listenerv3.FilterChainMatch{}) {
		return nil, errors.New("filter_chain_match is not supported by the stand-in")
	}
	if fc.GetTransportSocket() != nil {
		return nil, errors.New("downstream transport sockets (TLS) are not supported by the stand-in")
	}
	if len(fc.GetFilters()) != 1 {
		return nil, fmt.Errorf("the stand-in supports exactly one network filter (%s), got %d", hcmFilterName, len(fc.GetFilters()))
	}
	f := fc.GetFilters()[0]
	if f.GetTypedConfig().GetTypeUrl() != hcmType {
		return nil, fmt.Errorf("network filter %s (%s) is not supported by the stand-in", f.GetName(), f.GetTypedConfig().GetTypeUrl())
	}
	var m hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
		return nil, fmt.Errorf("http connection manager: %w", err)
	}
	if spec.hcm, err = hcm.Parse(&m); err != nil {
		return nil, fmt.Errorf("http connection manager: %w", err)
	}
	if spec.hcm.Traces() && l.GetTrafficDirection() == corev3.TrafficDirection_OUTBOUND {
		return nil, errors.New("http connection manager: tracing on an OUTBOUND listener (egress spans) is not implemented by the stand-in")
	}
	return spec, nil
}

func socketOptions(in []*corev3.SocketOption) ([]netnslisten.SocketOption, error) {
	var out []netnslisten.SocketOption
	for _, o := range in {
		so := netnslisten.SocketOption{Level: int(o.GetLevel()), Name: int(o.GetName()), Prebind: o.GetState() == corev3.SocketOption_STATE_PREBIND}
		switch v := o.GetValue().(type) {
		case *corev3.SocketOption_IntValue:
			so.Int = int(v.IntValue)
		case *corev3.SocketOption_BufValue:
			so.Buf = v.BufValue
			if so.Buf == nil {
				so.Buf = []byte{}
			}
		default:
			return nil, fmt.Errorf("socket option %q has no value", o.GetDescription())
		}
		out = append(out, so)
	}
	return out, nil
}

func socketSpec(a *corev3.Address, freebind bool, opts []netnslisten.SocketOption) (netnslisten.Spec, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netnslisten.Spec{}, errors.New("listener address must be a socket_address in the stand-in")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP || sa.GetNamedPort() != "" || sa.GetResolverName() != "" {
		return netnslisten.Spec{}, errors.New("listener socket_address must be TCP with port_value")
	}
	return netnslisten.Spec{
		Network:   "tcp",
		Address:   net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)),
		NetnsPath: sa.GetNetworkNamespaceFilepath(),
		Freebind:  freebind,
		Options:   opts,
	}, nil
}

// ldsErrorPrefix starts the error of a rejected listener update, one "<name>: <error>" line per
// listener following, as Envoy's LdsApiImpl::onConfigUpdate writes it (envoyproxy/envoy
// source/common/listener_manager/lds_api.cc); cmd/xds reads the listener names from it.
const ldsErrorPrefix = "Error adding/updating listener(s) "

// applyListeners applies a listener update the way Envoy's LDS does: each listener is added or
// updated on its own, and one that cannot be (it does not parse, names an unknown cluster, or its
// socket cannot be created, e.g. because its network namespace does not exist) keeps its previous
// version, or stays absent, while the others apply; the update is then rejected with Envoy's
// message. Sockets are created when the listener is applied, not when it is warm: an update whose
// addresses are equal to the running listener's (network namespace file path included, as Envoy
// compares them since 1.36.0) keeps its sockets, as Envoy clones them
// (ListenerManagerImpl::setupSocketFactoryForListener), so a metadata or filter change never binds
// again; a different address gets new sockets, bound before the old ones close. A listener is
// never retried by the stand-in itself: only a new update from the control plane tries again.
func (d *DataPlane) applyListeners(res map[string]*anypb.Any) error {
	specs := map[string]*listenerSpec{}
	var failed []string
	reject := func(name string, err error) {
		failed = append(failed, name+": "+err.Error())
		if old, ok := d.listeners[name]; ok {
			specs[name] = old
		}
	}
	for _, name := range slices.Sorted(maps.Keys(res)) {
		var l listenerv3.Listener
		if err := res[name].UnmarshalTo(&l); err != nil {
			reject(name, err)
			continue
		}
		spec, err := parseListener(&l)
		if err == nil {
			for _, c := range spec.hcm.ExtProcClusters {
				if _, ok := d.clusterCfg[c]; !ok {
					err = fmt.Errorf("ext_proc: unknown gRPC client cluster %q", c)
				}
			}
		}
		if err != nil {
			reject(name, err)
			continue
		}
		if old, ok := d.listeners[name]; ok && proto.Equal(old.proto, spec.proto) {
			specs[name] = old
			continue
		}
		if rl, ok := d.running[name]; !ok || rl.spec.bindKey() != spec.bindKey() {
			lns, err := openSockets(spec)
			if err != nil {
				d.stats.Inc("listener_manager.listener_create_failure")
				reject(name, err)
				continue
			}
			closeAll(d.bound[name])
			d.bound[name] = lns
		} else if lns, ok := d.bound[name]; ok { // a warming rebind superseded by one keeping the sockets
			closeAll(lns)
			delete(d.bound, name)
		}
		specs[name] = spec
	}
	d.listeners = specs
	d.reconcile()
	if len(failed) > 0 {
		return errors.New(ldsErrorPrefix + strings.Join(failed, "\n") + "\n")
	}
	return nil
}

// reconcile makes the running listeners match d.listeners: removed ones stop, warm ones (their
// RDS route configuration is here) serve on their new sockets or get their new filters in place;
// a warming listener's previous version keeps serving.
func (d *DataPlane) reconcile() {
	d.pruneRoutes()
	for name, rl := range d.running {
		if _, ok := d.listeners[name]; !ok {
			d.log.Info("listener removed", "listener", name)
			rl.stop()
			delete(d.running, name)
			d.stats.Inc("listener_manager.listener_removed")
		}
	}
	for name, lns := range d.bound {
		if _, ok := d.listeners[name]; !ok {
			closeAll(lns)
			delete(d.bound, name)
		}
	}
	routes := *d.routes.Load()
	for _, name := range slices.Sorted(maps.Keys(d.listeners)) {
		spec := d.listeners[name]
		if spec.hcm.RDSName != "" && routes[spec.hcm.RDSName] == nil {
			continue
		}
		rl, running := d.running[name]
		if lns, ok := d.bound[name]; ok {
			delete(d.bound, name)
			d.running[name] = serve(spec, lns, spec.hcm.Handler(d.env()), d.log)
			if running {
				rl.stop()
				d.stats.Inc("listener_manager.listener_modified")
			} else {
				d.stats.Inc("listener_manager.listener_added")
			}
			d.log.Info("listener serving", "listener", name, "sockets", fmt.Sprint(spec.sockets))
			continue
		}
		if !running || proto.Equal(rl.spec.proto, spec.proto) {
			continue
		}
		handler := spec.hcm.Handler(d.env())
		rl.handler.Store(&handler)
		rl.spec = spec
		d.log.Info("listener updated in place", "listener", name)
		d.stats.Inc("listener_manager.listener_modified")
	}
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// runningListener is a bound listener and its HTTP server.
type runningListener struct {
	spec    *listenerSpec
	lns     []net.Listener
	srv     *http.Server
	handler atomic.Pointer[http.Handler]
}

// openSockets creates the listener's sockets (in their network namespaces).
func openSockets(spec *listenerSpec) ([]net.Listener, error) {
	var lns []net.Listener
	for _, s := range spec.sockets {
		ln, err := netnslisten.Listen(context.Background(), s)
		if err != nil {
			closeAll(lns)
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// serve serves h on the listener's sockets.
func serve(spec *listenerSpec, lns []net.Listener, h http.Handler, log *slog.Logger) *runningListener {
	rl := &runningListener{spec: spec, lns: lns}
	rl.handler.Store(&h)
	c := spec.hcm
	rl.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			(*rl.handler.Load()).ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: c.RequestHeadersTimeout,
		ReadTimeout:       c.RequestTimeout,
		IdleTimeout:       c.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if rl.srv.ReadHeaderTimeout == 0 {
		rl.srv.ReadHeaderTimeout = c.StreamIdleTimeout
	}
	if c.HTTP2 {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		rl.srv.Protocols = &p
	}
	for _, ln := range rl.lns {
		go func() {
			if err := rl.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Warn("listener stopped", "listener", spec.name, "error", err)
			}
		}()
	}
	return rl
}

// drainTime is how long a stopped listener's open connections may still send their request.
const drainTime = 2 * time.Second

// stop closes the sockets at once (new connections go to another listener of the address, or are
// refused) and drains the open connections as Envoy drains a removed listener: each one's request,
// even one not read yet, is answered, with "Connection: close". Only after drainTime is the server
// shut down. (http.Server.Shutdown alone would close without an answer the connections accepted
// just before it whose request it had not read yet: a VM would see its request fail.)
func (rl *runningListener) stop() {
	rl.srv.SetKeepAlivesEnabled(false)
	for _, ln := range rl.lns {
		ln.Close()
	}
	go func() {
		time.Sleep(drainTime)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rl.srv.Shutdown(ctx); err != nil {
			rl.srv.Close()
		}
	}()
}

// Close stops every listener and upstream.
func (d *DataPlane) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, rl := range d.running {
		rl.stop()
		delete(d.running, name)
	}
	for name, lns := range d.bound {
		closeAll(lns)
		delete(d.bound, name)
	}
	d.clusters.Close()
}

// ListenerInfo describes one listener for the admin interface.
type ListenerInfo struct {
	Name        string   `json:"name"`
	State       string   `json:"state"`
	Addresses   []string `json:"addresses"`
	RouteConfig string   `json:"route_config,omitempty"`
}

// ClusterInfo describes one cluster for the admin interface.
type ClusterInfo struct {
	Name      string   `json:"name"`
	Endpoints []string `json:"endpoints"`
}

// Dump is the admin view of the configuration.
type Dump struct {
	Listeners    []ListenerInfo `json:"listeners"`
	Clusters     []ClusterInfo  `json:"clusters"`
	RouteConfigs []string       `json:"route_configs"`
	Updates      map[string]int `json:"updates"`
}

// Dump returns the current configuration summary.
func (d *DataPlane) Dump() Dump {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := Dump{Updates: map[string]int{}}
	for t, n := range d.versions {
		out.Updates[shortType(t)] = n
	}
	for _, name := range slices.Sorted(maps.Keys(d.listeners)) {
		spec := d.listeners[name]
		li := ListenerInfo{Name: name, State: "warming", RouteConfig: spec.hcm.RDSName}
		if rl, ok := d.running[name]; ok {
			li.State = "active"
			for _, ln := range rl.lns {
				li.Addresses = append(li.Addresses, ln.Addr().String())
			}
		}
		out.Listeners = append(out.Listeners, li)
	}
	for _, name := range slices.Sorted(maps.Keys(d.clusterCfg)) {
		ci := ClusterInfo{Name: name}
		if u := d.clusters.Get(name); u != nil {
			for _, e := range u.Config().Endpoints {
				ci.Endpoints = append(ci.Endpoints, e.Network+":"+e.Address)
			}
		}
		out.Clusters = append(out.Clusters, ci)
	}
	out.RouteConfigs = slices.Sorted(maps.Keys(*d.routes.Load()))
	return out
}
