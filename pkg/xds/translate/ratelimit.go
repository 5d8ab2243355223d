package translate

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	localRateLimitFilterName = "envoy.filters.http.local_ratelimit"
	// maxRateLimitedClients is the number of source IPs tracked per window, like the 10k entries of
	// neutron's haproxy stick tables; the least recently seen IP is forgotten first.
	maxRateLimitedClients = 10000
	// Descriptor keys: generic_key is the key of the generic_key action, remote_address the key of
	// the remote_address action.
	genericKey    = "generic_key"
	remoteAddress = "remote_address"
)

// localRateLimitFilter maps neutron's [metadata_rate_limiting] onto Envoy's local rate limit filter.
//
// Neutron's haproxy keeps two stick tables per source IP (http_req_rate over the base and over the
// burst window) and answers 429 when either rate is above its limit. Here each request produces
// two descriptors, (generic_key=base, remote_address=<peer IP>) and (generic_key=burst,
// remote_address=<peer IP>), from the filter's own rate_limits; each matches a wildcard descriptor
// (remote_address without value), so Envoy keeps one token bucket per source IP and window (dynamic
// descriptors, max_dynamic_descriptors per window). Each bucket holds <limit> tokens and refills
// <limit> tokens per <window>; the request is denied with 429 when any matched bucket is empty.
// A token bucket is not a sliding window: after a burst, it lets requests through again at the
// average rate instead of after the window has fully passed, which is the closest Envoy offers.
// remote_address is the TCP peer because the HCM sets use_remote_address with no trusted hops.
func localRateLimitFilter(rl RateLimit) (*anypb.Any, error) {
	full := &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}
	return pack(&localrlv3.LocalRateLimit{
		StatPrefix:     "metadata_rate_limit",
		Status:         &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
		FilterEnabled:  full,
		FilterEnforced: full,
		Descriptors: []*ratelimitv3.LocalRateLimitDescriptor{
			perClientDescriptor("base", rl.BaseQueryRateLimit, rl.BaseWindow),
			perClientDescriptor("burst", rl.BurstQueryRateLimit, rl.BurstWindow),
		},
		RateLimits: []*routev3.RateLimit{
			perClientRateLimit("base"),
			perClientRateLimit("burst"),
		},
		MaxDynamicDescriptors:           wrapperspb.UInt32(maxRateLimitedClients),
		AlwaysConsumeDefaultTokenBucket: wrapperspb.Bool(false),
	})
}

func perClientDescriptor(window string, limit int, d time.Duration) *ratelimitv3.LocalRateLimitDescriptor {
	return &ratelimitv3.LocalRateLimitDescriptor{
		Entries: []*ratelimitv3.RateLimitDescriptor_Entry{
			{Key: genericKey, Value: window},
			{Key: remoteAddress}, // no value: one bucket per distinct address
		},
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     uint32(limit),
			TokensPerFill: wrapperspb.UInt32(uint32(limit)),
			FillInterval:  durationpb.New(d),
		},
	}
}

func perClientRateLimit(window string) *routev3.RateLimit {
	return &routev3.RateLimit{Actions: []*routev3.RateLimit_Action{
		{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorValue: window}}},
		{ActionSpecifier: &routev3.RateLimit_Action_RemoteAddress_{RemoteAddress: &routev3.RateLimit_Action_RemoteAddress{}}},
	}}
}
