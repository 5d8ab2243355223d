// Package decide turns one request_headers message from Envoy into the answer cmd/extproc sends
// back: the signed header mutation for the instance that owns the VM address on the listener's
// network, or an immediate HTTP error. It fails closed: any doubt about who is asking is an error
// response, never a request forwarded to nova unsigned or signed for someone else.
package decide

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/request"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

// Header names nova reads. They are set with raw_value only (DESIGN.md section 3).
const (
	HeaderInstanceID = "x-instance-id"
	HeaderTenantID   = "x-tenant-id"
	HeaderSignature  = "x-instance-id-signature"
	HeaderXFF        = "x-forwarded-for"
)

// RemovedHeaders are the headers a VM must not control. Envoy applies remove_headers before
// set_headers and matches names case-insensitively, so every copy a VM sent, in any case, is gone
// before the signed values are set.
var RemovedHeaders = []string{
	HeaderInstanceID, HeaderSignature, HeaderTenantID, HeaderXFF,
	"x-neutron-network-id", "x-neutron-router-id", "x-ovn-network-id",
	"x-metadata-provider", "x-metadata-provider-signature",
}

// Decision is what was decided for one request, for logs, metrics and traces. It never holds the
// secret or the signature.
type Decision struct {
	Query    resolve.Query
	Instance resolve.Instance // zero unless Status is 200
	Outcome  answercache.Outcome
	Status   int   // 200 when the request goes on to nova signed; else the status answered
	Err      error // why, when Status is not 200
	// TraceID is the trace the request belongs to: the decision span's when tracing, else (for
	// decisions that are not 200 only) the one Envoy propagated, if any. Zero when unknown.
	TraceID trace.TraceID
}

// Decider answers request_headers messages. It is safe for concurrent use.
type Decider struct {
	cache  *answercache.Cache[answer]
	signer *sign.Signer
	log    *slog.Logger
	limit  *logLimiter
	obs    observer
}

// New returns a Decider that resolves through r (cached with opt), signs with s and logs every
// request that is not forwarded to nova on log (rate-limited). Options add tracing and metrics.
func New(r resolve.Resolver, s *sign.Signer, opt answercache.Options, log *slog.Logger, opts ...Option) (*Decider, error) {
	cfg := options{logLimit: DefaultLogLimit()}
	for _, o := range opts {
		o(&cfg)
	}
	d := &Decider{signer: s, log: log, limit: newLogLimiter(cfg.logLimit)}
	capacity := opt.Size
	if capacity <= 0 {
		capacity = answercache.DefaultSize
	}
	var err error
	if d.obs, err = newObserver(cfg, d.CacheLen, capacity); err != nil {
		return nil, fmt.Errorf("decision metrics: %w", err)
	}
	r, opt.OnEvict = d.obs.watch(guarded{r: r, log: log}, opt.OnEvict)
	d.cache = answercache.New(r, d.build, opt)
	return d, nil
}

// CacheLen returns the number of cached answers.
func (d *Decider) CacheLen() int { return d.cache.Len() }

// RequestHeaders answers one request_headers message of the stream whose context is ctx (it carries
// the stream's initial metadata), and logs it when it is not forwarded.
//
// For the request that filled the cache (outcome miss), the answer also asks Envoy (mode_override;
// the listener allows it) to send nova's response headers on the same stream, and the returned
// check is to be called with nova's status: a signature nova refuses is then logged and counted at
// once, not only seen as 403s by VMs. Every other request stays one round trip; check is nil then.
func (d *Decider) RequestHeaders(ctx context.Context, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, func(context.Context, int)) {
	resp, dec := d.Decide(ctx, req)
	switch {
	case dec.Status != http.StatusOK:
		d.logNotForwarded(ctx, &dec)
		return resp, nil
	case dec.Outcome != answercache.Miss:
		return resp, nil
	}
	// Only observed: the signed request goes on to nova whatever nova's verdict.
	resp.ModeOverride = seeNovaResponse
	return resp, d.verdictCheck(dec)
}

// verdictCheck returns the check of nova's answer to dec. Kept apart so that only a miss pays for
// the closure (capturing dec in RequestHeaders would move every decision to the heap).
func (d *Decider) verdictCheck(dec Decision) func(context.Context, int) {
	return func(ctx context.Context, status int) { d.novaVerdict(ctx, dec, status) }
}

// seeNovaResponse is the mode_override that asks for nova's response headers.
var seeNovaResponse = &extprocfv3.ProcessingMode{ResponseHeaderMode: extprocfv3.ProcessingMode_SEND}

// novaVerdict records what nova answered a request signed for dec.Instance.
func (d *Decider) novaVerdict(ctx context.Context, dec Decision, status int) {
	d.obs.novaVerdict(ctx, status)
	attrs := []slog.Attr{slog.Int("nova_status", status), slog.String("instance_id", dec.Instance.InstanceID),
		slog.String(dec.Query.Scope.Kind.String(), dec.Query.Scope.ID), slog.String("vm_addr", dec.Query.Addr.String())}
	switch {
	case status == http.StatusForbidden:
		d.log.LogAttrs(ctx, slog.LevelError, "nova refused the signature: the shared secret of metaproxy differs from nova's [neutron] metadata_proxy_shared_secret; change both together (docs/operations.md)", attrs...)
	case status == http.StatusNotFound:
		// The answer just cached may name an instance nova does not serve (or the path is one
		// nova does not know: the status is the same): it is kept only as long as a negative
		// one, so the next lookup asks Neutron again soon (the port may be changing hands).
		d.cache.Doubt(dec.Query)
		d.log.LogAttrs(ctx, slog.LevelWarn, "nova answered 404 to the first request signed for this instance: the port's device_id is not a nova instance, its project differs, or the VM asked for a path nova does not have; the cached answer is kept only for the negative TTL", attrs...)
	case status >= 500:
		d.log.LogAttrs(ctx, slog.LevelWarn, "nova failed to answer a signed request", attrs...)
	}
}

// logNotForwarded writes the line of a decision that is not 200, unless the rate limit drops it.
func (d *Decider) logNotForwarded(ctx context.Context, dec *Decision) {
	key := strconv.Itoa(dec.Status)
	if dec.Query.Scope.ID != "" {
		key = dec.Query.Scope.String() + " " + dec.Query.Addr.String()
	}
	ok, dropped := d.limit.allow(key)
	if !ok {
		d.obs.logSuppressed(ctx)
		return
	}
	level := slog.LevelInfo
	switch {
	case errors.Is(dec.Err, resolve.ErrUnavailable):
		// Every distinct Neutron or Keystone failure is logged once where it happens (cmd/extproc's
		// readiness); per request it is detail.
		level = slog.LevelDebug
	case dec.Status >= 500:
		level = slog.LevelWarn
	}
	attrs := dec.LogAttrs()
	if dropped > 0 {
		attrs = append(attrs, slog.Uint64("suppressed", dropped))
	}
	d.log.LogAttrs(ctx, level, "metadata request not forwarded", attrs...)
}

// Decide answers one request_headers message of the stream whose context is ctx and says what it
// decided.
func (d *Decider) Decide(ctx context.Context, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, Decision) {
	ctx, ob := d.obs.begin(ctx)
	resp, dec := d.decide(ctx, req)
	d.obs.end(ctx, ob, &dec)
	return resp, dec
}

func (d *Decider) decide(ctx context.Context, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, Decision) {
	q, err := request.Decode(ctx, req)
	if err != nil {
		var re *request.Error
		errors.As(err, &re)
		return Immediate(re.Status, re.Message), Decision{Status: re.Status, Err: err}
	}
	lookupCtx, lookup := d.obs.lookupStarted(ctx, q)
	a, outcome, err := d.cache.Lookup(lookupCtx, q)
	d.obs.lookupDone(lookup, outcome, err)
	dec := Decision{Query: q, Outcome: outcome}
	if err == nil {
		dec.Instance, dec.Status = a.instance(q.Scope), http.StatusOK
		return a.response(q.Addr), dec
	}
	dec.Err = err
	var ambiguous *resolve.AmbiguousError
	switch {
	case errors.Is(err, resolve.ErrNotFound):
		dec.Status = http.StatusNotFound
		return Immediate(dec.Status, fmt.Sprintf("Instance was not found on %s", q.Scope)), dec
	case errors.As(err, &ambiguous):
		dec.Status = http.StatusInternalServerError
		return Immediate(dec.Status, "Several ports own this address; the operator must fix the ports"), dec
	case errors.Is(err, resolve.ErrUnavailable):
		dec.Status = http.StatusServiceUnavailable
		return Immediate(dec.Status, unavailableBody(err)), dec
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		dec.Status = http.StatusGatewayTimeout
		return Immediate(dec.Status, "Timed out identifying this instance; retry later"), dec
	default:
		dec.Status = http.StatusInternalServerError
		return Immediate(dec.Status, "Internal error identifying this instance"), dec
	}
}

// unavailableBody is what a VM is told when no answer could be had, by cause (never a detail that
// names the operator's hosts or users).
func unavailableBody(err error) string {
	c, _ := cause.Of(err)
	switch c {
	case cause.KeystoneUnreachable:
		return "Keystone is unreachable: the metadata proxy cannot authenticate to Neutron to identify this instance right now; retry later"
	case cause.Credentials, cause.Forbidden:
		return "Neutron refuses the metadata proxy's credentials: it cannot identify this instance until the operator fixes them"
	case cause.TLS:
		return "The metadata proxy does not trust the certificate of Neutron or Keystone: it cannot identify this instance until the operator fixes it"
	case cause.BadResponse:
		return "Neutron's answer could not be used: the metadata proxy cannot identify this instance right now; retry later"
	default:
		return "Neutron is unreachable: the metadata proxy cannot identify this instance right now; retry later"
	}
}

// build signs once per cache fill; every later hit only builds the message (answer.response).
func (d *Decider) build(q resolve.Query, inst resolve.Instance) (a answer, err error) {
	defer recoverAs(&err, d.log, "signing the answer")
	return newAnswer(q.Scope, inst, d.signer.Sum(inst.InstanceID))
}

// guarded is the resolver the cache asks. The cache resolves and builds on a goroutine of its own
// (one per key in flight), where no stream can recover a panic: one there (a bug in the resolver
// or in the client under it) becomes the lookup's error, answered 500, instead of the end of the
// process.
type guarded struct {
	r   resolve.Resolver
	log *slog.Logger
}

// Resolve implements resolve.Resolver.
func (g guarded) Resolve(ctx context.Context, q resolve.Query) (inst resolve.Instance, err error) {
	defer recoverAs(&err, g.log, "the port source")
	return g.r.Resolve(ctx, q)
}

// recoverAs, deferred, turns a panic into *err and logs it with its stack.
func recoverAs(err *error, log *slog.Logger, what string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s panicked: %v", what, r)
		log.Error("panic in "+what+": the lookup fails (500); this is a bug, report it with this stack",
			"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// rawHeader overwrites key with value. Only raw_value is filled (value alone reaches nova as an
// empty header, both are rejected by Envoy) and append_action is OVERWRITE_IF_EXISTS_OR_ADD.
func rawHeader(key string, value []byte) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, RawValue: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// Immediate is an HTTP response Envoy sends the VM without contacting nova.
func Immediate(status int, body string) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				rawHeader("content-type", []byte("text/plain; charset=utf-8")),
			}},
			Body:    []byte(body + "\n"),
			Details: "metaproxy_" + strconv.Itoa(status),
		}},
	}
}

// LogAttrs returns the slog attributes of a decision, without secrets.
func (d Decision) LogAttrs() []slog.Attr {
	attrs := []slog.Attr{slog.Int("status", d.Status)}
	if d.Query.Scope.ID != "" {
		attrs = append(attrs, slog.String(d.Query.Scope.Kind.String(), d.Query.Scope.ID), slog.String("vm_addr", d.Query.Addr.String()))
	}
	if d.Outcome != 0 {
		attrs = append(attrs, slog.String("cache", d.Outcome.String()))
	}
	if d.Instance.InstanceID != "" {
		attrs = append(attrs, slog.String("instance_id", d.Instance.InstanceID), slog.String("port_id", d.Instance.PortID))
	}
	if d.Err != nil {
		attrs = append(attrs, slog.String("error", d.Err.Error()))
	}
	if d.TraceID.IsValid() {
		attrs = append(attrs, slog.String("trace_id", d.TraceID.String()))
	}
	return attrs
}
