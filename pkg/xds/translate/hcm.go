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

// httpConnectionManager builds and packs the HCM of one listener: [local rate limit], ext_proc,
// router, with the route from RDS (RouteName, over ADS).
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
// The HCM of a network is shared by its IPv4 and IPv6 listeners (same stat_prefix, the listeners'
// own stat_prefix tells them apart); rateLimit may differ per IP version, in which case each
// version gets its own. tracing (nil: off) is Envoy's OpenTelemetry tracing, see EnvoyTracing.
func httpConnectionManager(statPrefix string, t Timeouts, rateLimit, extProc, router *anypb.Any, tracing *hcmv3.HttpConnectionManager_Tracing) (*anypb.Any, error) {
	var filters []*hcmv3.HttpFilter
	if rateLimit != nil {
		filters = append(filters, httpFilter(localRateLimitFilterName, rateLimit))
	}
	filters = append(filters, httpFilter(extProcFilterName, extProc), httpFilter(wellknown.Router, router))
	return pack(&hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
			RouteConfigName: RouteName,
		}},
		HttpFilters:               filters,
		UseRemoteAddress:          wrapperspb.Bool(true),
		XffNumTrustedHops:         0,
		SkipXffAppend:             true,
		RequestTimeout:            durationpb.New(t.HTTPRequest),
		StreamIdleTimeout:         durationpb.New(t.Client),
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(t.KeepAlive)},
		Tracing:                   tracing,
	})
}

// routerFilter packs the router filter. suppress_envoy_headers keeps x-envoy-* timing headers out of
// the answers VMs get.
func routerFilter() (*anypb.Any, error) {
	return pack(&routerv3.Router{SuppressEnvoyHeaders: true})
}

func httpFilter(name string, cfg *anypb.Any) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}
}
