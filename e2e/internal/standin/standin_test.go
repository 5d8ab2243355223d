package standin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpoptsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin"
	"github.com/metaproxy/metaproxy/pkg/contract"
)

const nodeID = "standin-test-node"

// ---- fake ext_proc ----

type extProcMode int32

const (
	modeMutate extProcMode = iota
	modeImmediate
	modeSlow
	modeBothValues
	modeOverride
)

type seenRequest struct {
	headers    map[string]string
	valueOnly  []string
	md         metadata.MD
	source     string
	endOfStrem bool
}

type fakeExtProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	mode atomic.Int32
	mu   sync.Mutex
	seen []seenRequest
	// statuses are the :status values of response_headers messages received.
	statuses []string
}

func (f *fakeExtProc) last(t *testing.T) seenRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		t.Fatal("ext_proc received no request")
	}
	return f.seen[len(f.seen)-1]
}

func (f *fakeExtProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	rh := req.GetRequestHeaders()
	sr := seenRequest{headers: map[string]string{}, md: md, endOfStrem: rh.GetEndOfStream()}
	for _, h := range rh.GetHeaders().GetHeaders() {
		sr.headers[h.GetKey()] = string(h.GetRawValue())
		if h.GetValue() != "" {
			sr.valueOnly = append(sr.valueOnly, h.GetKey())
		}
	}
	sr.source = req.GetAttributes()[contract.ExtProcAttributesKey].GetFields()[contract.SourceAddressAttribute].GetStringValue()
	f.mu.Lock()
	f.seen = append(f.seen, sr)
	f.mu.Unlock()
	switch extProcMode(f.mode.Load()) {
	case modeImmediate:
		return stream.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
			ImmediateResponse: &extprocv3.ImmediateResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode_NotFound},
				Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-refused", RawValue: []byte("yes")}}}},
				Body:    []byte("Instance was not found"),
			},
		}})
	case modeSlow:
		time.Sleep(time.Second)
		return nil
	case modeBothValues:
		return stream.Send(headersResponse(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-instance-id", Value: "a", RawValue: []byte("a")}}))
	case modeOverride:
		resp := headersResponse()
		resp.ModeOverride = &extprocfv3.ProcessingMode{ResponseHeaderMode: extprocfv3.ProcessingMode_SEND}
		if err := stream.Send(resp); err != nil {
			return err
		}
		next, err := stream.Recv()
		if err != nil {
			return err
		}
		for _, h := range next.GetResponseHeaders().GetHeaders().GetHeaders() {
			if h.GetKey() == ":status" {
				f.mu.Lock()
				f.statuses = append(f.statuses, string(h.GetRawValue()))
				f.mu.Unlock()
			}
		}
		return stream.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "x-checked", RawValue: []byte("yes")}}}}}}}})
	default:
		return stream.Send(headersResponse(
			&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-instance-id", RawValue: []byte("inst-" + sr.md.Get(contract.NetworkIDMetadata)[0])}},
			&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-value-only", Value: "dropped"}},
		))
	}
}

func headersResponse(set ...*corev3.HeaderValueOption) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
			SetHeaders:    set,
			RemoveHeaders: []string{"x-tenant-id"},
		}},
	}}}
}

// ---- fake nova ----

type upstreamSeen struct {
	header http.Header
	body   string
}

type fakeNova struct {
	calls atomic.Int32
	mu    sync.Mutex
	last  upstreamSeen
}

func (n *fakeNova) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n.calls.Add(1)
	b, _ := io.ReadAll(r.Body)
	n.mu.Lock()
	n.last = upstreamSeen{header: r.Header.Clone(), body: string(b)}
	n.mu.Unlock()
	fmt.Fprint(w, "nova says hi")
}

func (n *fakeNova) seen() upstreamSeen {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.last
}

// ---- namespaces ----

type netnsPair struct {
	server, client string
	clientIP       string
	serverIf       string
	clientIf       string
}

const clientLinkLocal = "fe80::2"

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newNetnsPair(t *testing.T) netnsPair {
	t.Helper()
	id := rand.IntN(1 << 20)
	p := netnsPair{server: fmt.Sprintf("sti-s-%d", id), client: fmt.Sprintf("sti-c-%d", id)}
	third := 1 + id%250
	p.clientIP = fmt.Sprintf("10.251.%d.2", third)
	vs, vc := fmt.Sprintf("stis%d", id), fmt.Sprintf("stic%d", id)
	p.serverIf, p.clientIf = vs, vc
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", p.server).Run()
		_ = exec.Command("ip", "netns", "del", p.client).Run()
	})
	run(t, "ip", "netns", "add", p.server)
	run(t, "ip", "netns", "add", p.client)
	run(t, "ip", "link", "add", vs, "type", "veth", "peer", "name", vc)
	run(t, "ip", "link", "set", vs, "netns", p.server)
	run(t, "ip", "link", "set", vc, "netns", p.client)
	for _, ns := range []string{p.server, p.client} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", p.server, "addr", "add", fmt.Sprintf("10.251.%d.1/24", third), "dev", vs)
	run(t, "ip", "-n", p.server, "addr", "add", contract.MetadataIPv4+"/32", "dev", vs)
	// Only the fixed link-local addresses, without DAD, so the client's source is known.
	run(t, "ip", "netns", "exec", p.server, "sysctl", "-qw", "net.ipv6.conf."+vs+".addr_gen_mode=1")
	run(t, "ip", "netns", "exec", p.client, "sysctl", "-qw", "net.ipv6.conf."+vc+".addr_gen_mode=1")
	run(t, "ip", "-n", p.server, "addr", "add", contract.MetadataIPv6+"/64", "dev", vs, "nodad")
	run(t, "ip", "-n", p.client, "addr", "add", clientLinkLocal+"/64", "dev", vc, "nodad")
	run(t, "ip", "-n", p.server, "link", "set", vs, "up")
	run(t, "ip", "-n", p.client, "addr", "add", p.clientIP+"/24", "dev", vc)
	run(t, "ip", "-n", p.client, "link", "set", vc, "up")
	run(t, "ip", "-n", p.client, "route", "add", contract.MetadataIPv4+"/32", "via", fmt.Sprintf("10.251.%d.1", third))
	return p
}

type curlResult struct {
	exit   int
	status int
	body   string
}

func curl(t *testing.T, ns string, args ...string) curlResult {
	t.Helper()
	full := append([]string{"netns", "exec", ns, "curl", "-sS", "-m", "5", "-w", "\n%{http_code}"}, args...)
	cmd := exec.Command("ip", full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := curlResult{}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.exit = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl: %v", err)
	}
	s := out.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		res.body = s[:i]
		res.status, _ = strconv.Atoi(s[i+1:])
	}
	return res
}

// ---- control plane ----

type harness struct {
	t        *testing.T
	rds      bool
	cache    cachev3.SnapshotCache
	version  int
	ns       netnsPair
	sock     string
	nova     *fakeNova
	novaAddr string
	ext      *fakeExtProc
	extSrv   *grpc.Server
	nacks    atomic.Int32
	lastNACK atomic.Value // string: the error_detail of the last NACK
	admin    string       // the stand-in's admin URL
}

func (h *harness) startExtProc() {
	h.t.Helper()
	_ = os.Remove(h.sock)
	ln, err := net.Listen("unix", h.sock)
	if err != nil {
		h.t.Fatal(err)
	}
	h.extSrv = grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(h.extSrv, h.ext)
	go func() { _ = h.extSrv.Serve(ln) }()
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// listener6 is the IPv6 listener the translator builds: the link-local metadata address with no
// zone, made bindable by SO_BINDTODEVICE before bind.
func (h *harness) listener6(name, netID string) *listenerv3.Listener {
	l := h.listener(name, netID)
	l.Address.GetSocketAddress().Address = contract.MetadataIPv6
	l.SocketOptions = []*corev3.SocketOption{{
		Description: "SO_BINDTODEVICE",
		Level:       1,  // SOL_SOCKET
		Name:        25, // SO_BINDTODEVICE
		Value:       &corev3.SocketOption_BufValue{BufValue: []byte(h.ns.serverIf)},
		State:       corev3.SocketOption_STATE_PREBIND,
	}}
	return l
}

func (h *harness) listener(name, netID string, filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
	t := h.t
	if filters == nil {
		filters = []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.ext_proc", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &extprocfv3.ExternalProcessor{
				GrpcService: &corev3.GrpcService{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: contract.ExtProcClusterName}},
					InitialMetadata: []*corev3.HeaderValue{{Key: contract.NetworkIDMetadata, Value: netID}},
				},
				ProcessingMode: &extprocfv3.ProcessingMode{
					RequestHeaderMode:  extprocfv3.ProcessingMode_SEND,
					ResponseHeaderMode: extprocfv3.ProcessingMode_SKIP,
				},
				RequestAttributes: []string{contract.SourceAddressAttribute},
				AllowModeOverride: true,
			})}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}},
		}
	}
	m := &hcmv3.HttpConnectionManager{
		StatPrefix:       "metadata",
		UseRemoteAddress: wrapperspb.Bool(true),
		RouteSpecifier:   &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig()},
		HttpFilters:      filters,
	}
	if h.rds {
		m.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: "metadata",
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}}
	}
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:                  contract.MetadataIPv4,
			PortSpecifier:            &corev3.SocketAddress_PortValue{PortValue: contract.MetadataPort},
			NetworkNamespaceFilepath: "/var/run/netns/" + h.ns.server,
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, m)},
		}}}},
	}
}

func routeConfig() *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: "metadata",
		VirtualHosts: []*routev3.VirtualHost{{
			Name: "metadata", Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: contract.NovaClusterName},
					Timeout:          durationpb.New(5 * time.Second),
				}},
			}},
		}},
	}
}

func (h *harness) clusters(novaAddr string) []types.Resource {
	host, port, _ := net.SplitHostPort(novaAddr)
	p, _ := strconv.Atoi(port)
	h2 := mustAny(h.t, &httpoptsv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpoptsv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpoptsv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpoptsv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		},
	}})
	cla := func(name string, a *corev3.Address) *endpointv3.ClusterLoadAssignment {
		return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: a}}}},
		}}}
	}
	return []types.Resource{
		&clusterv3.Cluster{
			Name:                          contract.ExtProcClusterName,
			ConnectTimeout:                durationpb.New(time.Second),
			ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
			LoadAssignment:                cla(contract.ExtProcClusterName, &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: h.sock}}}),
		},
		&clusterv3.Cluster{
			Name:                 contract.NovaClusterName,
			ConnectTimeout:       durationpb.New(time.Second),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: cla(contract.NovaClusterName, &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
			}}}),
		},
	}
}

func (h *harness) push(clusters []types.Resource, listeners ...types.Resource) {
	h.t.Helper()
	h.version++
	res := map[resource.Type][]types.Resource{
		resource.ClusterType:  clusters,
		resource.ListenerType: listeners,
	}
	if h.rds && len(listeners) > 0 {
		res[resource.RouteType] = []types.Resource{routeConfig()}
	}
	snap, err := cachev3.NewSnapshot(strconv.Itoa(h.version), res)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		h.t.Fatal(err)
	}
	if err := h.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		h.t.Fatal(err)
	}
}

func newHarness(t *testing.T, delta, rds bool) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the stand-in feature test needs root (network namespaces, veth, binding port 80): run it as root")
	}
	for _, bin := range []string{"ip", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{t: t, rds: rds, ns: newNetnsPair(t), ext: &fakeExtProc{}, nova: &fakeNova{}}
	dir, err := os.MkdirTemp("", "standin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h.sock = filepath.Join(dir, "extproc.sock")
	h.startExtProc()
	t.Cleanup(func() { h.extSrv.Stop() })

	nova := httptest.NewServer(h.nova)
	t.Cleanup(nova.Close)
	h.novaAddr = nova.Listener.Addr().String()

	h.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				h.lastNACK.Store(r.GetErrorDetail().GetMessage())
				h.nacks.Add(1)
			}
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				h.lastNACK.Store(r.GetErrorDetail().GetMessage())
				h.nacks.Add(1)
			}
			return nil
		},
	}
	xds := serverv3.NewServer(ctx, h.cache, cb)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, xds)
	xln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(xln) }()
	t.Cleanup(gs.Stop)

	h.push(h.clusters(h.novaAddr), h.listener("net-a", "net-a"))

	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- standin.Run(ctx, standin.Config{XDS: xln.Addr().String(), NodeID: nodeID, Delta: delta, AdminListener: aln},
			slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("standin.Run: %v", err)
		}
	})
	h.admin = "http://" + aln.Addr().String()
	waitFor(t, "stand-in ready with listener net-a", func() bool { return strings.Contains(h.listeners(), "net-a::") })
	return h
}

// listeners returns the stand-in's /listeners ("" when it does not answer).
func (h *harness) listeners() string {
	r, err := http.Get(h.admin + "/listeners")
	if err != nil {
		return ""
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const metaURL = "http://169.254.169.254/openstack/latest/meta_data.json"

func TestStandInFeatures(t *testing.T) {
	h := newHarness(t, false, false)

	t.Run("header mutation reaches nova, forged headers do not", func(t *testing.T) {
		before := h.nova.calls.Load()
		r := curl(t, h.ns.client, "-H", "X-Tenant-ID: forged", "-H", "X-Instance-ID: forged", "-H", "X-Forwarded-For: 6.6.6.6", metaURL)
		if r.exit != 0 || r.status != 200 || r.body != "nova says hi" {
			t.Fatalf("curl = %+v, want 200 from nova", r)
		}
		if got := h.nova.calls.Load() - before; got != 1 {
			t.Fatalf("nova calls = %d, want 1", got)
		}
		up := h.nova.seen()
		if got := up.header.Get("X-Instance-Id"); got != "inst-net-a" {
			t.Errorf("nova X-Instance-ID = %q, want inst-net-a", got)
		}
		if v, ok := up.header["X-Tenant-Id"]; ok {
			t.Errorf("nova received removed X-Tenant-ID %q", v)
		}
		if v, ok := up.header["X-Value-Only"]; !ok || len(v) != 1 || v[0] != "" {
			t.Errorf("nova X-Value-Only = %q (present %v), want one empty value (value without raw_value)", v, ok)
		}
		if got, want := up.header.Get("X-Forwarded-For"), "6.6.6.6,"+h.ns.clientIP; got != want {
			t.Errorf("nova X-Forwarded-For = %q, want %q (Envoy appends the peer)", got, want)
		}
		seen := h.ext.last(t)
		if len(seen.valueOnly) > 0 {
			t.Errorf("ext_proc headers with value instead of raw_value: %v", seen.valueOnly)
		}
		for k, want := range map[string]string{":method": "GET", ":path": "/openstack/latest/meta_data.json", ":authority": "169.254.169.254", ":scheme": "http", "x-instance-id": "forged"} {
			if got := seen.headers[k]; got != want {
				t.Errorf("ext_proc header %s = %q, want %q", k, got, want)
			}
		}
		if got := seen.md.Get(contract.NetworkIDMetadata); len(got) != 1 || got[0] != "net-a" {
			t.Errorf("ext_proc metadata %s = %v, want [net-a]", contract.NetworkIDMetadata, got)
		}
		if host, _, err := net.SplitHostPort(seen.source); err != nil || host != h.ns.clientIP {
			t.Errorf("source.address = %q, want %s:<port>", seen.source, h.ns.clientIP)
		}
		if !seen.endOfStrem {
			t.Error("GET without body: end_of_stream = false, want true")
		}
	})

	t.Run("mode_override sends nova's response headers on the same stream", func(t *testing.T) {
		h.ext.mode.Store(int32(modeOverride))
		defer h.ext.mode.Store(int32(modeMutate))
		r := curl(t, h.ns.client, "-i", metaURL)
		if r.status != 200 || !strings.Contains(strings.ToLower(r.body), "x-checked: yes") {
			t.Fatalf("curl = %+v, want nova's 200 with the response-phase mutation", r)
		}
		h.ext.mu.Lock()
		defer h.ext.mu.Unlock()
		if len(h.ext.statuses) != 1 || h.ext.statuses[0] != "200" {
			t.Errorf("response_headers :status seen by ext_proc = %v, want [200]", h.ext.statuses)
		}
	})

	t.Run("POST body streams to nova untouched", func(t *testing.T) {
		r := curl(t, h.ns.client, "-X", "POST", "--data-binary", "s3cret-password", "http://169.254.169.254/openstack/latest/password")
		if r.status != 200 {
			t.Fatalf("curl = %+v", r)
		}
		if got := h.nova.seen().body; got != "s3cret-password" {
			t.Errorf("nova body = %q", got)
		}
		if h.ext.last(t).endOfStrem {
			t.Error("POST with body: end_of_stream = true, want false")
		}
	})

	t.Run("immediate response reaches client, nova not called", func(t *testing.T) {
		h.ext.mode.Store(int32(modeImmediate))
		defer h.ext.mode.Store(int32(modeMutate))
		before := h.nova.calls.Load()
		r := curl(t, h.ns.client, "-i", metaURL)
		if r.status != 404 || !strings.Contains(r.body, "Instance was not found") || !strings.Contains(strings.ToLower(r.body), "x-refused: yes") {
			t.Fatalf("curl = %+v, want 404 with body and x-refused header", r)
		}
		if got := h.nova.calls.Load() - before; got != 0 {
			t.Errorf("nova called %d times", got)
		}
	})

	t.Run("value and raw_value both set is a 500", func(t *testing.T) {
		h.ext.mode.Store(int32(modeBothValues))
		defer h.ext.mode.Store(int32(modeMutate))
		before := h.nova.calls.Load()
		if r := curl(t, h.ns.client, metaURL); r.status != 500 {
			t.Fatalf("curl = %+v, want 500", r)
		}
		if got := h.nova.calls.Load() - before; got != 0 {
			t.Errorf("nova called %d times", got)
		}
	})

	t.Run("slow ext_proc is a 504, nova not called", func(t *testing.T) {
		h.ext.mode.Store(int32(modeSlow))
		defer h.ext.mode.Store(int32(modeMutate))
		before := h.nova.calls.Load()
		if r := curl(t, h.ns.client, metaURL); r.status != 504 {
			t.Fatalf("curl = %+v, want 504", r)
		}
		if got := h.nova.calls.Load() - before; got != 0 {
			t.Errorf("nova called %d times", got)
		}
	})

	t.Run("ext_proc down is a 500, nova not called", func(t *testing.T) {
		h.extSrv.Stop()
		before := h.nova.calls.Load()
		if r := curl(t, h.ns.client, metaURL); r.status != 500 {
			t.Fatalf("curl = %+v, want 500", r)
		}
		if got := h.nova.calls.Load() - before; got != 0 {
			t.Errorf("nova called %d times", got)
		}
		h.startExtProc()
		waitFor(t, "ext_proc back", func() bool { return curl(t, h.ns.client, metaURL).status == 200 })
	})

	t.Run("nova unreachable is Envoy's 503", func(t *testing.T) {
		dead, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadAddr := dead.Addr().String()
		dead.Close()
		h.push(h.clusters(deadAddr), h.listener("net-a", "net-a"))
		waitFor(t, "503 from dead nova", func() bool {
			r := curl(t, h.ns.client, metaURL)
			return r.status == 503 && r.body == "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
		})
		h.push(h.clusters(h.novaAddr), h.listener("net-a", "net-a"))
		waitFor(t, "nova back", func() bool { return curl(t, h.ns.client, metaURL).status == 200 })
	})

	t.Run("unknown filter is NACKed and the old listener keeps serving", func(t *testing.T) {
		before := h.nacks.Load()
		bad := h.listener("net-a", "net-a", &hcmv3.HttpFilter{Name: "envoy.filters.http.lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{
			TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"},
		}})
		h.push(h.clusters(h.novaAddr), bad)
		waitFor(t, "NACK", func() bool { return h.nacks.Load() > before })
		if r := curl(t, h.ns.client, metaURL); r.status != 200 {
			t.Fatalf("curl = %+v, want the previous listener to keep serving", r)
		}
	})

	t.Run("listener in a missing namespace is NACKed as Envoy does, and bound once pushed again after it exists", func(t *testing.T) {
		ns := fmt.Sprintf("sti-m-%d", rand.IntN(1<<20))
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		missing := h.listener("net-m", "net-m")
		missing.Address.GetSocketAddress().NetworkNamespaceFilepath = "/var/run/netns/" + ns
		before := h.nacks.Load()
		h.push(h.clusters(h.novaAddr), h.listener("net-a", "net-a"), missing)
		// Wait for net-m's own NACK: the previous subtest's listener may be NACKed once more
		// (its bad filter is in every push until this one replaces it).
		waitFor(t, "NACK naming net-m", func() bool {
			got, _ := h.lastNACK.Load().(string)
			return h.nacks.Load() > before && strings.Contains(got, "net-m")
		})
		if got, _ := h.lastNACK.Load().(string); !strings.HasPrefix(got, "Error adding/updating listener(s) net-m: ") || !strings.HasSuffix(got, "\n") {
			t.Errorf("NACK detail %q, want Envoy's LDS form naming net-m", got)
		}
		if r := curl(t, h.ns.client, metaURL); r.status != 200 {
			t.Fatalf("curl = %+v, want net-a to keep serving", r)
		}
		if l := h.listeners(); strings.Contains(l, "net-m::") {
			t.Fatalf("the rejected listener is listed:\n%s", l)
		}
		run(t, "ip", "netns", "add", ns)
		// As cmd/xds does: the same listener marked with an attempt, so the delta cache sends it too.
		again := proto.Clone(missing).(*listenerv3.Listener)
		again.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"metaproxy.xds": {Fields: map[string]*structpb.Value{"attempt": structpb.NewNumberValue(1)}}}}
		h.push(h.clusters(h.novaAddr), h.listener("net-a", "net-a"), again)
		waitFor(t, "net-m bound", func() bool { return strings.Contains(h.listeners(), "net-m::") })
	})

	t.Run("IPv6 link-local listener with SO_BINDTODEVICE", func(t *testing.T) {
		h.push(h.clusters(h.novaAddr), h.listener("net-a", "net-a"), h.listener6("net-a-v6", "net-a"))
		url := "http://[" + contract.MetadataIPv6 + "%25" + h.ns.clientIf + "]/latest/meta-data/"
		waitFor(t, "IPv6 listener served", func() bool { return curl(t, h.ns.client, "-g", url).status == 200 })
		if got, want := h.ext.last(t).source, "["+clientLinkLocal+"]:"; !strings.HasPrefix(got, want) {
			t.Errorf("source.address = %q, want %s<port> (no zone, as Envoy prints it)", got, want)
		}
	})

	t.Run("listener removed refuses, added serves", func(t *testing.T) {
		h.push(h.clusters(h.novaAddr))
		waitFor(t, "connection refused", func() bool { return curl(t, h.ns.client, metaURL).exit == 7 })
		h.push(h.clusters(h.novaAddr), h.listener("net-b", "net-b"))
		waitFor(t, "net-b served", func() bool { return curl(t, h.ns.client, metaURL).status == 200 })
		if got := h.nova.seen().header.Get("X-Instance-Id"); got != "inst-net-b" {
			t.Errorf("nova X-Instance-ID = %q, want inst-net-b from the new listener's metadata", got)
		}
	})
}

// TestStandInRDS runs the control plane's shape (route configuration over RDS) in both protocols.
func TestStandInRDS(t *testing.T) {
	for name, delta := range map[string]bool{"sotw": false, "delta": true} {
		t.Run(name, func(t *testing.T) { addRemove(t, newHarness(t, delta, true)) })
	}
}

func TestStandInDelta(t *testing.T) {
	addRemove(t, newHarness(t, true, false))
}

// addRemove serves a request, removes the listener, adds another one.
func addRemove(t *testing.T, h *harness) {
	t.Helper()
	r := curl(t, h.ns.client, "-H", "X-Tenant-ID: forged", metaURL)
	if r.status != 200 {
		t.Fatalf("curl = %+v", r)
	}
	if got := h.nova.seen().header.Get("X-Instance-Id"); got != "inst-net-a" {
		t.Errorf("nova X-Instance-ID = %q", got)
	}
	h.push(h.clusters(h.novaAddr))
	waitFor(t, "connection refused after delta removal", func() bool { return curl(t, h.ns.client, metaURL).exit == 7 })
	h.push(h.clusters(h.novaAddr), h.listener("net-c", "net-c"))
	waitFor(t, "net-c served", func() bool { return curl(t, h.ns.client, metaURL).status == 200 })
	if got := h.nova.seen().header.Get("X-Instance-Id"); got != "inst-net-c" {
		t.Errorf("nova X-Instance-ID = %q, want inst-net-c", got)
	}
}
