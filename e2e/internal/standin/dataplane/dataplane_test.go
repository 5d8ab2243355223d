package dataplane

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/hcm"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func socketAddress(port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// TestParseListenerReusePort checks Envoy's default: SO_REUSEPORT on every socket of a listener
// unless enable_reuse_port is false.
func TestParseListenerReusePort(t *testing.T) {
	tests := map[string]struct {
		enable *wrapperspb.BoolValue
		want   bool
	}{
		"unset (Envoy's default)": {want: true},
		"true":                    {enable: wrapperspb.Bool(true), want: true},
		"false":                   {enable: wrapperspb.Bool(false), want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := &hcmv3.HttpConnectionManager{
				StatPrefix: "metadata",
				RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
					Name: "metadata",
					VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{{
						Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
						Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200}},
					}}}},
				}},
				HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
			}
			l := &listenerv3.Listener{
				Name:                "l",
				Address:             socketAddress(8080),
				AdditionalAddresses: []*listenerv3.AdditionalAddress{{Address: socketAddress(8081)}},
				EnableReusePort:     tc.enable,
				FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
					Name: hcmFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, m)},
				}}}},
			}
			spec, err := parseListener(l)
			if err != nil {
				t.Fatal(err)
			}
			if len(spec.sockets) != 2 {
				t.Fatalf("%d sockets, want 2", len(spec.sockets))
			}
			for _, s := range spec.sockets {
				if s.ReusePort != tc.want {
					t.Errorf("socket %s: ReusePort %v, want %v", s.Address, s.ReusePort, tc.want)
				}
			}
		})
	}
}

// TestStoppedListenerAnswersAcceptedConnections: a connection the listener accepted before it was
// stopped (a removed listener, as Envoy drains it) still gets its request answered, with
// "Connection: close", even when the request arrives after the stop.
func TestStoppedListenerAnswersAcceptedConnections(t *testing.T) {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix:     "metadata",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "metadata"}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
	}
	spec, err := parseListener(&listenerv3.Listener{Name: "l", Address: socketAddress(0), FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: hcmFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, m)},
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	lns, err := openSockets(spec)
	if err != nil {
		t.Fatal(err)
	}
	rl := serve(spec, lns, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), slog.New(slog.DiscardHandler))
	c, err := net.Dial("tcp", rl.lns[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Half a request: the server has accepted the connection and waits for the rest.
	if _, err := io.WriteString(c, "GET /openstack HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	rl.stop()
	time.Sleep(100 * time.Millisecond)
	if _, err := io.WriteString(c, "Host: 169.254.169.254\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the accepted connection got no answer after the stop: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("answer %d, Connection: close %v; want 200 and close", resp.StatusCode, resp.Close)
	}
	if _, err := net.DialTimeout("tcp", rl.lns[0].Addr().String(), time.Second); err == nil {
		t.Error("the stopped listener still accepts new connections")
	}
}

// TestSocketsKeptAsEnvoyClonesThem: as Envoy (hasCompatibleAddress), an update whose address,
// namespace file path included as written, is unchanged keeps the sockets (a metadata change, or a
// namespace recreated at the same path), and another spelling of the path gets new ones.
func TestSocketsKeptAsEnvoyClonesThem(t *testing.T) {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix:     "metadata",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "metadata"}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
	}
	key := func(path string, md *corev3.Metadata) string {
		t.Helper()
		a := socketAddress(80)
		a.GetSocketAddress().NetworkNamespaceFilepath = path
		spec, err := parseListener(&listenerv3.Listener{Name: "l", Address: a, Metadata: md, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: hcmFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, m)},
		}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return spec.bindKey()
	}
	base := key("/var/run/netns/qdhcp-a", nil)
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"metaproxy.xds": {Fields: map[string]*structpb.Value{"attempt": structpb.NewNumberValue(1)}}}}
	if key("/var/run/netns/qdhcp-a", md) != base {
		t.Error("a metadata change rebinds")
	}
	if key("/var/run/netns/./qdhcp-a", nil) == base {
		t.Error("another spelling of the namespace path keeps the socket")
	}
}

// TestRouteConfigOutlivesItsRemoval: as in Envoy, an RDS update that removes or leaves out a route
// configuration keeps it, and so does removing the last listener that names it, while that
// listener's connections may still drain; only then is it dropped.
func TestRouteConfigOutlivesItsRemoval(t *testing.T) {
	d := New(slog.New(slog.DiscardHandler), hcm.NewStats())
	defer d.Close()
	now := time.Now()
	d.now = func() time.Time { return now }
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: "metadata",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "metadata",
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
	}
	l := &listenerv3.Listener{Name: "l", Address: socketAddress(0), FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: hcmFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, m)},
	}}}}}
	apply := func(typeURL string, res map[string]*anypb.Any) {
		t.Helper()
		if err := d.Apply(typeURL, res); err != nil {
			t.Fatal(err)
		}
	}
	route := func() bool { return d.env().RouteTable("metadata") != nil }
	apply(xdsclient.ListenerType, map[string]*anypb.Any{"l": mustAny(t, l)})
	apply(xdsclient.RouteType, map[string]*anypb.Any{"metadata": mustAny(t, &routev3.RouteConfiguration{Name: "metadata"})})
	if !route() {
		t.Fatal("the route configuration was not applied")
	}
	apply(xdsclient.RouteType, map[string]*anypb.Any{})
	if !route() {
		t.Fatal("an RDS update without the route configuration dropped it; Envoy ignores such removals")
	}
	// Long after the last update, the listener goes: its drain starts now, not at that update.
	now = now.Add(10 * routeLinger)
	apply(xdsclient.ListenerType, map[string]*anypb.Any{})
	if !route() {
		t.Fatal("the route configuration went with its listener, whose connections still drain")
	}
	now = now.Add(routeLinger + time.Second)
	apply(xdsclient.ListenerType, map[string]*anypb.Any{})
	if route() {
		t.Error("the route configuration is kept although no listener has named it for longer than any drain")
	}
}
