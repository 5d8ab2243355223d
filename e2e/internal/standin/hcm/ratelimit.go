package hcm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// defaultMaxDynamicDescriptors bounds wildcard descriptor buckets (Envoy's default is 20).
const defaultMaxDynamicDescriptors = 20

// rateLimit is envoy.filters.http.local_ratelimit: a token bucket, plus per-descriptor buckets when
// descriptors are configured (an entry with an empty value is a wildcard: one bucket per distinct
// value, as Envoy's dynamic descriptors).
type rateLimit struct {
	statPrefix     string
	status         int
	enabled        *corev3.RuntimeFractionalPercent
	enforced       *corev3.RuntimeFractionalPercent
	bucket         *tokenBucket
	descriptors    []*rlDescriptor
	rateLimits     []*routev3.RateLimit
	stage          uint32
	alwaysDefault  bool
	respHeaders    []headerAdd
	reqHeadersNotE []headerAdd
	maxDynamic     int
}

type rlDescriptor struct {
	keys     []string
	values   []string
	template *typev3.TokenBucket
	mu       sync.Mutex
	buckets  map[string]*tokenBucket
	order    []string
}

func parseRateLimit(a *anypb.Any) (*rateLimit, error) {
	var c ratelimitv3.LocalRateLimit
	if err := a.UnmarshalTo(&c); err != nil {
		return nil, err
	}
	if c.GetLocalRateLimitPerDownstreamConnection() || c.GetLocalClusterRateLimit() != nil || c.GetEnableXRatelimitHeaders() != 0 {
		return nil, errors.New("local_rate_limit_per_downstream_connection, local_cluster_rate_limit and x-ratelimit headers are not supported by the stand-in")
	}
	rl := &rateLimit{
		statPrefix:    c.GetStatPrefix(),
		status:        http.StatusTooManyRequests,
		enabled:       c.GetFilterEnabled(),
		enforced:      c.GetFilterEnforced(),
		rateLimits:    c.GetRateLimits(),
		stage:         c.GetStage(),
		alwaysDefault: c.GetAlwaysConsumeDefaultTokenBucket() == nil || c.GetAlwaysConsumeDefaultTokenBucket().GetValue(),
		maxDynamic:    defaultMaxDynamicDescriptors,
	}
	if c.GetMaxDynamicDescriptors() != nil {
		rl.maxDynamic = int(c.GetMaxDynamicDescriptors().GetValue())
	}
	if s := c.GetStatus(); s != nil && s.GetCode() != 0 {
		rl.status = int(s.GetCode())
	}
	if c.GetTokenBucket() != nil {
		b, err := newTokenBucket(c.GetTokenBucket())
		if err != nil {
			return nil, err
		}
		rl.bucket = b
	}
	for _, d := range c.GetDescriptors() {
		if d.GetShadowMode() {
			return nil, errors.New("descriptor shadow_mode is not supported by the stand-in")
		}
		if _, err := newTokenBucket(d.GetTokenBucket()); err != nil {
			return nil, fmt.Errorf("descriptor: %w", err)
		}
		rd := &rlDescriptor{template: d.GetTokenBucket(), buckets: map[string]*tokenBucket{}}
		for _, e := range d.GetEntries() {
			rd.keys = append(rd.keys, e.GetKey())
			rd.values = append(rd.values, e.GetValue())
		}
		rl.descriptors = append(rl.descriptors, rd)
	}
	for _, r := range rl.rateLimits {
		if err := checkActions(r); err != nil {
			return nil, err
		}
	}
	var err error
	conv := func(in []*corev3.HeaderValueOption) []headerAdd {
		ops, e := parseHeaderOps(in, nil, nil, nil)
		if e != nil {
			err = e
		}
		return ops.reqAdd
	}
	rl.respHeaders = conv(c.GetResponseHeadersToAdd())
	rl.reqHeadersNotE = conv(c.GetRequestHeadersToAddWhenNotEnforced())
	if err != nil {
		return nil, err
	}
	return rl, nil
}

func checkActions(r *routev3.RateLimit) error {
	if r.GetLimit() != nil || r.GetApplyOnStreamDone() || r.GetHitsAddend() != nil {
		return errors.New("rate_limits limit overrides, hits_addend and apply_on_stream_done are not supported by the stand-in")
	}
	for _, a := range r.GetActions() {
		switch a.GetActionSpecifier().(type) {
		case *routev3.RateLimit_Action_RemoteAddress_, *routev3.RateLimit_Action_GenericKey_, *routev3.RateLimit_Action_RequestHeaders_,
			*routev3.RateLimit_Action_DestinationCluster_, *routev3.RateLimit_Action_MaskedRemoteAddress_:
		default:
			return fmt.Errorf("rate limit action %T is not supported by the stand-in", a.GetActionSpecifier())
		}
	}
	return nil
}

// rlEntry is one descriptor entry.
type rlEntry struct{ key, value string }

// descriptorsFor builds the descriptors of a request from rate limit actions; a descriptor whose
// action cannot produce an entry is dropped (Envoy semantics).
func descriptorsFor(s *Stream, limits []*routev3.RateLimit, stage uint32) [][]rlEntry {
	var out [][]rlEntry
	for _, r := range limits {
		if r.GetStage().GetValue() != stage {
			continue
		}
		var d []rlEntry
		ok := true
		for _, a := range r.GetActions() {
			switch x := a.GetActionSpecifier().(type) {
			case *routev3.RateLimit_Action_RemoteAddress_:
				d = append(d, rlEntry{"remote_address", s.Remote.Addr().String()})
			case *routev3.RateLimit_Action_MaskedRemoteAddress_:
				bits := 32
				if s.Remote.Addr().Is6() {
					bits = 128
					if x.MaskedRemoteAddress.GetV6PrefixMaskLen() != nil {
						bits = int(x.MaskedRemoteAddress.GetV6PrefixMaskLen().GetValue())
					}
				} else if x.MaskedRemoteAddress.GetV4PrefixMaskLen() != nil {
					bits = int(x.MaskedRemoteAddress.GetV4PrefixMaskLen().GetValue())
				}
				p, _ := s.Remote.Addr().Prefix(bits)
				d = append(d, rlEntry{"masked_remote_address", p.String()})
			case *routev3.RateLimit_Action_GenericKey_:
				k := x.GenericKey.GetDescriptorKey()
				if k == "" {
					k = "generic_key"
				}
				d = append(d, rlEntry{k, x.GenericKey.GetDescriptorValue()})
			case *routev3.RateLimit_Action_RequestHeaders_:
				v, has := s.header(x.RequestHeaders.GetHeaderName())
				if !has {
					if x.RequestHeaders.GetSkipIfAbsent() {
						continue
					}
					ok = false
				}
				d = append(d, rlEntry{x.RequestHeaders.GetDescriptorKey(), v})
			case *routev3.RateLimit_Action_DestinationCluster_:
				if rt := s.Route(); rt != nil {
					d = append(d, rlEntry{"destination_cluster", rt.Cluster})
				}
			}
		}
		if ok && len(d) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func fractionHit(f *corev3.RuntimeFractionalPercent) bool {
	if f == nil {
		return false
	}
	dv := f.GetDefaultValue()
	var den uint32
	switch dv.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		den = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10000
	case typev3.FractionalPercent_MILLION:
		den = 1000000
	}
	if dv.GetNumerator() >= den {
		return true
	}
	return rand.Uint32N(den) < dv.GetNumerator()
}

func (rl *rateLimit) decodeHeaders(_ context.Context, s *Stream, perRoute any) bool {
	if pr, ok := perRoute.(*rateLimit); ok {
		rl = pr
	}
	stat := func(n string) {
		s.env.Stats.Inc("http." + s.cfg.StatPrefix + "." + rl.statPrefix + ".http_local_rate_limit." + n)
	}
	if !fractionHit(rl.enabled) {
		return true
	}
	stat("enabled")
	limits := rl.rateLimits
	if len(limits) == 0 {
		if rt := s.Route(); rt != nil {
			limits = rt.RateLimits
			if len(limits) == 0 || rt.IncludeVhRateLimit {
				limits = append(limits[:len(limits):len(limits)], rt.vhost.RateLimits...)
			}
		}
	}
	allowed := rl.allow(descriptorsFor(s, limits, rl.stage))
	if allowed {
		stat("ok")
		return true
	}
	stat("rate_limited")
	if !fractionHit(rl.enforced) {
		for _, a := range rl.reqHeadersNotE {
			applyAdd(&s.Headers, a.key, a.value.render(s), a.action)
		}
		return true
	}
	stat("enforced")
	var extra Headers
	for _, a := range rl.respHeaders {
		applyAdd(&extra, a.key, a.value.render(s), a.action)
	}
	s.sendLocalReply(rl.status, "local_rate_limited", extra)
	return false
}

// allow consumes tokens from every matching descriptor bucket (and the default bucket when no
// descriptor matched or always_consume_default_token_bucket is set).
func (rl *rateLimit) allow(reqDescs [][]rlEntry) bool {
	matched := false
	allowed := true
	for _, rd := range rl.descriptors {
		for _, d := range reqDescs {
			key, ok := rd.match(d)
			if !ok {
				continue
			}
			matched = true
			if !rd.bucket(key, rl.maxDynamic).take() {
				allowed = false
			}
		}
	}
	if rl.bucket != nil && (!matched || rl.alwaysDefault) {
		if !rl.bucket.take() {
			allowed = false
		}
	}
	return allowed
}

func (rd *rlDescriptor) match(d []rlEntry) (string, bool) {
	if len(d) != len(rd.keys) {
		return "", false
	}
	key := ""
	for i, e := range d {
		if e.key != rd.keys[i] {
			return "", false
		}
		if rd.values[i] != "" && rd.values[i] != e.value {
			return "", false
		}
		key += e.key + "=" + e.value + ";"
	}
	return key, true
}

func (rd *rlDescriptor) bucket(key string, max int) *tokenBucket {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if b, ok := rd.buckets[key]; ok {
		return b
	}
	if max > 0 && len(rd.order) >= max {
		delete(rd.buckets, rd.order[0])
		rd.order = rd.order[1:]
	}
	b, _ := newTokenBucket(rd.template)
	rd.buckets[key] = b
	rd.order = append(rd.order, key)
	return b
}

// tokenBucket refills tokens_per_fill tokens every fill_interval, up to max_tokens.
type tokenBucket struct {
	mu       sync.Mutex
	max      float64
	perFill  float64
	interval time.Duration
	tokens   float64
	last     time.Time
}

func newTokenBucket(tb *typev3.TokenBucket) (*tokenBucket, error) {
	if tb == nil || tb.GetMaxTokens() == 0 || tb.GetFillInterval().AsDuration() <= 0 {
		return nil, errors.New("token_bucket needs max_tokens > 0 and fill_interval > 0")
	}
	per := uint32(1)
	if tb.GetTokensPerFill() != nil {
		per = tb.GetTokensPerFill().GetValue()
	}
	return &tokenBucket{
		max: float64(tb.GetMaxTokens()), perFill: float64(per), interval: tb.GetFillInterval().AsDuration(),
		tokens: float64(tb.GetMaxTokens()), last: time.Now(),
	}, nil
}

func (b *tokenBucket) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if fills := int64(now.Sub(b.last) / b.interval); fills > 0 {
		b.tokens = min(b.max, b.tokens+float64(fills)*b.perFill)
		b.last = b.last.Add(time.Duration(fills) * b.interval)
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
