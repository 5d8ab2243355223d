package hcm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/cluster"
)

// Filter names and type URLs the stand-in implements.
const (
	ExtProcFilter   = "envoy.filters.http.ext_proc"
	RateLimitFilter = "envoy.filters.http.local_ratelimit"
	RouterFilter    = "envoy.filters.http.router"

	extProcType        = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
	extProcPerRouteTyp = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
	rateLimitType      = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
	routerType         = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
)

// Env is what a running HCM needs from the rest of the stand-in.
type Env struct {
	// Clusters resolves cluster names to upstreams.
	Clusters *cluster.Manager
	// RouteTable returns an RDS route configuration by name, nil when absent.
	RouteTable func(name string) *RouteTable
	// Stats receives counters.
	Stats *Stats
	// Log is the logger.
	Log *slog.Logger
}

// Config is a parsed HttpConnectionManager.
type Config struct {
	// StatPrefix is the HCM stat_prefix.
	StatPrefix string
	// RDSName is the route configuration fetched over RDS, "" with an inline route_config.
	RDSName string
	// HTTP2 says the listener also accepts h2c (codec_type AUTO or HTTP2).
	HTTP2 bool
	// RequestTimeout, RequestHeadersTimeout, StreamIdleTimeout and IdleTimeout are the HCM timeouts.
	RequestTimeout, RequestHeadersTimeout, StreamIdleTimeout, IdleTimeout time.Duration
	// ExtProcClusters lists the clusters ext_proc filters talk to (they must exist, as in Envoy).
	ExtProcClusters []string

	inline                    *RouteTable
	useRemoteAddress          bool
	skipXffAppend             bool
	xffTrustedHops            uint32
	generateRequestID         bool
	preserveExternalRequestID bool
	serverName                string
	serverPassThrough         bool
	stripPort                 bool
	filters                   []namedFilter
	// early are the early_header_mutation_extensions, applied before anything else.
	early []earlyMutation
	// tracing is the HCM's tracing (nil: off).
	tracing *tracingConfig
}

type namedFilter struct {
	name string
	f    httpFilter
}

// httpFilter is one decoder filter of the chain.
type httpFilter interface {
	// decodeHeaders handles the request headers; it returns false when it answered the request
	// (or the request must not go further).
	decodeHeaders(ctx context.Context, s *Stream, perRoute any) bool
}

// Default HCM timeouts (Envoy's).
const (
	defaultStreamIdleTimeout = 5 * time.Minute
	defaultIdleTimeout       = time.Hour
)

// Parse validates an HttpConnectionManager and returns its Config.
func Parse(m *hcmv3.HttpConnectionManager) (*Config, error) {
	c := &Config{
		StatPrefix:        m.GetStatPrefix(),
		useRemoteAddress:  m.GetUseRemoteAddress().GetValue(),
		skipXffAppend:     m.GetSkipXffAppend(),
		xffTrustedHops:    m.GetXffNumTrustedHops(),
		generateRequestID: m.GetGenerateRequestId() == nil || m.GetGenerateRequestId().GetValue(),
		serverName:        m.GetServerName(),
		stripPort:         m.GetStripAnyHostPort() || m.GetStripMatchingHostPort(),
		StreamIdleTimeout: defaultStreamIdleTimeout,
		IdleTimeout:       defaultIdleTimeout,
	}
	c.preserveExternalRequestID = m.GetPreserveExternalRequestId()
	if c.serverName == "" {
		c.serverName = "envoy"
	}
	switch m.GetServerHeaderTransformation() {
	case hcmv3.HttpConnectionManager_OVERWRITE:
	case hcmv3.HttpConnectionManager_PASS_THROUGH, hcmv3.HttpConnectionManager_APPEND_IF_ABSENT:
		c.serverPassThrough = true
	}
	switch m.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO:
		c.HTTP2 = true
	case hcmv3.HttpConnectionManager_HTTP1:
	default:
		return nil, fmt.Errorf("codec_type %s is not supported by the stand-in", m.GetCodecType())
	}
	if d := m.GetRequestTimeout(); d != nil {
		c.RequestTimeout = d.AsDuration()
	}
	if d := m.GetRequestHeadersTimeout(); d != nil {
		c.RequestHeadersTimeout = d.AsDuration()
	}
	if d := m.GetStreamIdleTimeout(); d != nil {
		c.StreamIdleTimeout = d.AsDuration()
	}
	if d := m.GetCommonHttpProtocolOptions().GetIdleTimeout(); d != nil {
		c.IdleTimeout = d.AsDuration()
	}
	if len(m.GetUpgradeConfigs()) > 0 || m.GetScopedRoutes() != nil || len(m.GetOriginalIpDetectionExtensions()) > 0 {
		return nil, errors.New("upgrade_configs, scoped_routes and IP detection extensions are not supported by the stand-in")
	}
	// Every request is external (and, with use_remote_address, an edge request): Envoy 1.33+ deems
	// no address internal without internal_address_config.
	if ia := m.GetInternalAddressConfig(); ia != nil && (ia.GetUnixSockets() || len(ia.GetCidrRanges()) > 0) {
		return nil, errors.New("internal_address_config is not supported by the stand-in (every request is external)")
	}
	var err error
	if c.early, err = parseEarlyMutations(m.GetEarlyHeaderMutationExtensions()); err != nil {
		return nil, err
	}
	if c.tracing, err = parseTracing(m.GetTracing()); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	if c.tracing != nil {
		if err := unsupportedWithTracing(m); err != nil {
			return nil, err
		}
	}
	switch rs := m.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_RouteConfig:
		t, err := ParseRouteTable(rs.RouteConfig)
		if err != nil {
			return nil, err
		}
		c.inline = t
	case *hcmv3.HttpConnectionManager_Rds:
		if rs.Rds.GetConfigSource().GetAds() == nil {
			return nil, errors.New("rds.config_source must be ads in the stand-in")
		}
		c.RDSName = rs.Rds.GetRouteConfigName()
		if c.RDSName == "" {
			return nil, errors.New("rds without route_config_name")
		}
	default:
		return nil, fmt.Errorf("route specifier %T is not supported by the stand-in", m.GetRouteSpecifier())
	}
	for i, hf := range m.GetHttpFilters() {
		last := i == len(m.GetHttpFilters())-1
		f, err := parseFilter(hf.GetName(), hf.GetTypedConfig())
		if err != nil {
			if hf.GetIsOptional() && errors.Is(err, errUnknownFilter) {
				continue
			}
			return nil, fmt.Errorf("http filter %d (%s): %w", i, hf.GetName(), err)
		}
		if hf.GetDisabled() {
			return nil, fmt.Errorf("http filter %s: disabled filters are not supported by the stand-in", hf.GetName())
		}
		_, isRouter := f.(*router)
		if isRouter != last {
			return nil, fmt.Errorf("http filter %s: the router must be the last (terminal) filter", hf.GetName())
		}
		if ep, ok := f.(*extProc); ok {
			c.ExtProcClusters = append(c.ExtProcClusters, ep.cfg.cluster)
		}
		c.filters = append(c.filters, namedFilter{name: hf.GetName(), f: f})
	}
	if len(c.filters) == 0 {
		return nil, errors.New("http_filters must end with envoy.filters.http.router")
	}
	return c, nil
}

// Traces reports whether the HCM has tracing configured. The stand-in traces as an ingress
// listener does (traffic_direction INBOUND or unspecified).
func (c *Config) Traces() bool { return c.tracing != nil }

var errUnknownFilter = errors.New("unknown http filter")

func parseFilter(name string, tc *anypb.Any) (httpFilter, error) {
	if tc == nil {
		return nil, fmt.Errorf("%w %s: typed_config is required by the stand-in", errUnknownFilter, name)
	}
	switch tc.GetTypeUrl() {
	case extProcType:
		return parseExtProc(tc)
	case rateLimitType:
		return parseRateLimit(tc)
	case routerType:
		return parseRouter(tc)
	default:
		return nil, fmt.Errorf("%w: %s (%s) is not implemented by the stand-in", errUnknownFilter, name, tc.GetTypeUrl())
	}
}

func (c *Config) table(env *Env) *RouteTable {
	if c.inline != nil {
		return c.inline
	}
	if env.RouteTable == nil {
		return nil
	}
	return env.RouteTable(c.RDSName)
}

// Handler returns the http.Handler that runs requests through this HCM.
func (c *Config) Handler(env *Env) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.serve(env, w, r)
	})
}

func (c *Config) serve(env *Env, w http.ResponseWriter, r *http.Request) {
	s := newStream(c, env, w, r)
	s.log = env.Log.With("method", s.Method, "path", s.Path, "remote", s.DirectRemote.String())
	s.mutateRequestHeaders()
	s.startTrace()
	ctx := r.Context()
	defer func() {
		for _, f := range s.cleanups {
			f()
		}
		s.finishTrace()
	}()
	for _, nf := range c.filters {
		pr := s.Route().perFilterConfig(nf.name)
		if _, off := pr.(filterDisabled); off {
			continue
		}
		if !nf.f.decodeHeaders(ctx, s, pr) || s.answered {
			return
		}
	}
}

// parsePerFilterTyped parses one typed_per_filter_config value by its type URL.
func parsePerFilterTyped(a *anypb.Any) (any, error) {
	switch a.GetTypeUrl() {
	case extProcPerRouteTyp:
		return parseExtProcPerRoute(a)
	case rateLimitType:
		return parseRateLimit(a)
	default:
		return nil, fmt.Errorf("type %s is not supported by the stand-in", a.GetTypeUrl())
	}
}
