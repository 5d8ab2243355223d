package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// hcmShared is what the HTTP connection managers of all listeners share, built once by NewShared:
// everything but the stat prefix and the ext_proc filter, which name the network. Its messages are
// only read after NewShared, by every listener's HCM (safe for concurrent use).
//
// Client addresses: use_remote_address with xff_num_trusted_hops 0 makes Envoy take the TCP peer
// (the VM) as the downstream address, which is what source.address and the rate limit's
// remote_address see; nothing a VM sends can change it. skip_xff_append stops Envoy from appending
// the peer to X-Forwarded-For: ext_proc overwrites X-Forwarded-For with the resolved VM address, and
// an appended value after a VM-seeded one would give nova a list it does not expect (the double
// X-Forwarded-For of rcbops/chef-cookbooks#954).
//
// Timeouts map neutron's [metadata_haproxy]: timeout http-request -> request_timeout, timeout
// client -> stream_idle_timeout, timeout http-keep-alive -> idle_timeout (connections without
// requests); timeout server is the route timeout, timeout connect the cluster connect_timeout.
//
// The route comes from RDS (RouteName, over ADS): one RDS configuration for every listener, so that
// every listener names the same routes (Shared.Routes) and a snapshot with listeners is consistent
// with exactly those routes.
type hcmShared struct {
	rds                        *hcmv3.HttpConnectionManager_Rds
	useRemoteAddress           *wrapperspb.BoolValue
	requestTimeout, streamIdle *durationpb.Duration
	protocolOptions            *corev3.HttpProtocolOptions
	// tracing is Envoy's OpenTelemetry tracing (nil: off), see EnvoyTracing.
	tracing *hcmv3.HttpConnectionManager_Tracing
	// earlyHeaderMutations remove the trace context a VM sends before anything reads it (every
	// listener, tracing on or off), see earlyHeaderMutations.
	earlyHeaderMutations []*corev3.TypedExtensionConfig
	// rateLimit is the local rate limit filter per IP version (absent: no rate limit), router the
	// router filter.
	rateLimit map[ipVersion]*hcmv3.HttpFilter
	router    *hcmv3.HttpFilter
}

func newHCMShared(t Timeouts, rateLimit map[ipVersion]*anypb.Any, tracing *hcmv3.HttpConnectionManager_Tracing) (*hcmShared, error) {
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	early, err := earlyHeaderMutations()
	if err != nil {
		return nil, err
	}
	b := &hcmShared{
		rds: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
			RouteConfigName: RouteName,
		}},
		useRemoteAddress: wrapperspb.Bool(true),
		requestTimeout:   durationpb.New(t.HTTPRequest),
		streamIdle:       durationpb.New(t.Client),
		protocolOptions:  &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(t.KeepAlive)},
		tracing:          tracing,
		rateLimit:        map[ipVersion]*hcmv3.HttpFilter{},
		router:           httpFilter(wellknown.Router, router),

		earlyHeaderMutations: early,
	}
	for v, f := range rateLimit {
		b.rateLimit[v] = httpFilter(localRateLimitFilterName, f)
	}
	return b, nil
}

// httpConnectionManager builds and packs the HCM of one listener of IP version v: the early header
// mutation that drops VM-sent trace context, then the filters [local rate limit], ext_proc,
// router. The HCM of a network is the same for its IPv4 and IPv6 listeners (same stat_prefix, the
// listeners' own stat_prefix tells them apart) unless the rate limit differs per IP version
// (sameForVersions).
func (b *hcmShared) httpConnectionManager(statPrefix string, v ipVersion, extProc *anypb.Any) (*anypb.Any, error) {
	var filters []*hcmv3.HttpFilter
	if rl := b.rateLimit[v]; rl != nil {
		filters = append(filters, rl)
	}
	filters = append(filters, httpFilter(extProcFilterName, extProc), b.router)
	return pack(&hcmv3.HttpConnectionManager{
		StatPrefix:                statPrefix,
		CodecType:                 hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier:            b.rds,
		HttpFilters:               filters,
		UseRemoteAddress:          b.useRemoteAddress,
		XffNumTrustedHops:         0,
		SkipXffAppend:             true,
		RequestTimeout:            b.requestTimeout,
		StreamIdleTimeout:         b.streamIdle,
		CommonHttpProtocolOptions: b.protocolOptions,
		Tracing:                   b.tracing,

		// Run before routing, tracing and the filters.
		EarlyHeaderMutationExtensions: b.earlyHeaderMutations,
	})
}

// sameForVersions reports whether the HCM of IP versions v and w is the same.
func (b *hcmShared) sameForVersions(v, w ipVersion) bool { return b.rateLimit[v] == b.rateLimit[w] }

// routerFilter packs the router filter. suppress_envoy_headers keeps x-envoy-* timing headers out of
// the answers VMs get.
func routerFilter() (*anypb.Any, error) {
	return pack(&routerv3.Router{SuppressEnvoyHeaders: true})
}

func httpFilter(name string, cfg *anypb.Any) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}
}
