package hcm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// defaultMessageTimeout is Envoy's ext_proc message_timeout default.
const defaultMessageTimeout = 200 * time.Millisecond

// extProc is envoy.filters.http.ext_proc for request headers (bodies, trailers and response
// phases are not implemented and are rejected at config time).
type extProc struct {
	cfg extProcConfig
}

type extProcConfig struct {
	cluster          string
	initialMetadata  [][2]string
	failureModeAllow bool
	sendHeaders      bool
	attributes       []string
	messageTimeout   time.Duration
	statusOnError    int
	statPrefix       string
	disableImmediate bool
	disableClearRC   bool
	// allowModeOverride lets a request_headers answer ask for the response headers of that request
	// (mode_override.response_header_mode SEND), as Envoy does with allow_mode_override.
	allowModeOverride bool
	rules             mutationChecker
	forward           forwardRules
}

// extProcOverride is a parsed ExtProcPerRoute.
type extProcOverride struct {
	disabled bool
	o        *extprocfv3.ExtProcOverrides
	mode     *bool
	cluster  string
	md       [][2]string
}

func parseExtProc(a *anypb.Any) (*extProc, error) {
	var c extprocfv3.ExternalProcessor
	if err := a.UnmarshalTo(&c); err != nil {
		return nil, err
	}
	cfg := extProcConfig{
		failureModeAllow:  c.GetFailureModeAllow(),
		attributes:        c.GetRequestAttributes(),
		messageTimeout:    defaultMessageTimeout,
		statusOnError:     http.StatusInternalServerError,
		statPrefix:        c.GetStatPrefix(),
		disableImmediate:  c.GetDisableImmediateResponse(),
		disableClearRC:    c.GetDisableClearRouteCache(),
		allowModeOverride: c.GetAllowModeOverride(),
	}
	if c.GetHttpService() != nil {
		return nil, errors.New("http_service is not supported by the stand-in (grpc_service.envoy_grpc only)")
	}
	var err error
	if cfg.cluster, cfg.initialMetadata, err = parseGrpcService(c.GetGrpcService()); err != nil {
		return nil, err
	}
	if cfg.sendHeaders, err = checkMode(c.GetProcessingMode()); err != nil {
		return nil, err
	}
	if d := c.GetMessageTimeout(); d != nil {
		cfg.messageTimeout = d.AsDuration()
	}
	if s := c.GetStatusOnError(); s != nil && s.GetCode() != 0 {
		cfg.statusOnError = int(s.GetCode())
	}
	if c.GetObservabilityMode() || c.GetMetadataOptions() != nil ||
		c.GetProcessingRequestModifier() != nil || c.GetOnProcessingResponse() != nil ||
		c.GetSendBodyWithoutWaitingForHeaderResponse() || len(c.GetAllowedOverrideModes()) > 0 {
		return nil, errors.New("observability_mode, metadata_options, allowed_override_modes and extensions are not supported by the stand-in")
	}
	if cfg.forward, err = parseForwardRules(c.GetForwardRules()); err != nil {
		return nil, err
	}
	if cfg.rules, err = parseRules(c.GetMutationRules()); err != nil {
		return nil, err
	}
	return &extProc{cfg: cfg}, nil
}

func parseGrpcService(g *corev3.GrpcService) (string, [][2]string, error) {
	if g.GetEnvoyGrpc() == nil {
		return "", nil, errors.New("grpc_service must be envoy_grpc in the stand-in")
	}
	if g.GetEnvoyGrpc().GetClusterName() == "" {
		return "", nil, errors.New("grpc_service.envoy_grpc.cluster_name is empty")
	}
	md, err := parseMetadata(g.GetInitialMetadata())
	return g.GetEnvoyGrpc().GetClusterName(), md, err
}

func parseMetadata(in []*corev3.HeaderValue) ([][2]string, error) {
	var out [][2]string
	for _, hv := range in {
		v := hv.GetValue()
		if hv.GetRawValue() != nil {
			v = string(hv.GetRawValue())
		}
		k := strings.ToLower(hv.GetKey())
		if k == "" || !validHeaderValue(v) {
			return nil, fmt.Errorf("invalid initial_metadata %q", hv.GetKey())
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// checkMode accepts what the stand-in implements: request headers SEND or SKIP, nothing else.
func checkMode(m *extprocfv3.ProcessingMode) (sendHeaders bool, err error) {
	if m.GetResponseHeaderMode() != extprocfv3.ProcessingMode_SKIP {
		return false, errors.New("processing_mode.response_header_mode must be SKIP in the stand-in (response processing is not implemented)")
	}
	if m.GetRequestBodyMode() != extprocfv3.ProcessingMode_NONE || m.GetResponseBodyMode() != extprocfv3.ProcessingMode_NONE {
		return false, errors.New("processing_mode body modes must be NONE in the stand-in")
	}
	if m.GetRequestTrailerMode() == extprocfv3.ProcessingMode_SEND || m.GetResponseTrailerMode() == extprocfv3.ProcessingMode_SEND {
		return false, errors.New("processing_mode trailer modes must be SKIP in the stand-in")
	}
	return m.GetRequestHeaderMode() != extprocfv3.ProcessingMode_SKIP, nil
}

func parseExtProcPerRoute(a *anypb.Any) (any, error) {
	var pr extprocfv3.ExtProcPerRoute
	if err := a.UnmarshalTo(&pr); err != nil {
		return nil, err
	}
	if pr.GetDisabled() {
		return &extProcOverride{disabled: true}, nil
	}
	o := pr.GetOverrides()
	out := &extProcOverride{o: o}
	//lint:ignore SA1019 rejected explicitly, as the stand-in does not implement it.
	if o.GetAsyncMode() || o.GetMetadataOptions() != nil || o.GetProcessingRequestModifier() != nil {
		return nil, errors.New("ext_proc overrides async_mode, metadata_options and processing_request_modifier are not supported by the stand-in")
	}
	if o.GetProcessingMode() != nil {
		send, err := checkMode(o.GetProcessingMode())
		if err != nil {
			return nil, err
		}
		out.mode = &send
	}
	if o.GetGrpcService() != nil {
		var err error
		if out.cluster, out.md, err = parseGrpcService(o.GetGrpcService()); err != nil {
			return nil, err
		}
	}
	md, err := parseMetadata(o.GetGrpcInitialMetadata())
	if err != nil {
		return nil, err
	}
	out.md = append(out.md, md...)
	return out, nil
}

// merged returns the filter config with a per-route override applied (Envoy merge rules:
// grpc_initial_metadata entries override or add to the filter's by key).
func (c extProcConfig) merged(pr any) (extProcConfig, bool) {
	o, ok := pr.(*extProcOverride)
	if !ok || o == nil {
		return c, true
	}
	if o.disabled {
		return c, false
	}
	if o.mode != nil {
		c.sendHeaders = *o.mode
	}
	if o.cluster != "" {
		c.cluster = o.cluster
	}
	if len(o.o.GetRequestAttributes()) > 0 {
		c.attributes = o.o.GetRequestAttributes()
	}
	if o.o.GetFailureModeAllow() != nil {
		c.failureModeAllow = o.o.GetFailureModeAllow().GetValue()
	}
	if len(o.md) > 0 {
		md := slices.Clone(c.initialMetadata)
		for _, kv := range o.md {
			i := slices.IndexFunc(md, func(e [2]string) bool { return e[0] == kv[0] })
			if i >= 0 {
				md[i] = kv
			} else {
				md = append(md, kv)
			}
		}
		c.initialMetadata = md
	}
	return c, true
}

func (f *extProc) stat(s *Stream, cfg extProcConfig, name string) {
	s.env.Stats.Inc("http." + s.cfg.StatPrefix + ".ext_proc." + cfg.statPrefix + name)
}

func (f *extProc) decodeHeaders(ctx context.Context, s *Stream, perRoute any) bool {
	cfg, enabled := f.cfg.merged(perRoute)
	if !enabled || !cfg.sendHeaders {
		return true
	}
	up := s.env.Clusters.Get(cfg.cluster)
	if up == nil {
		s.log.Warn("ext_proc cluster unknown", "cluster", cfg.cluster)
		return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
	}
	conn, err := up.GRPC()
	if err != nil {
		s.log.Warn("ext_proc cluster connection", "cluster", cfg.cluster, "error", err)
		return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
	}
	sctx, cancel := context.WithCancel(ctx)
	kept := false // the stream stays open for the response phase (mode_override)
	defer func() {
		if !kept {
			cancel()
		}
	}()
	// Envoy's gRPC client gives the stream a child of the request's span and writes its context
	// into the stream's metadata after initial_metadata (Grpc::AsyncStreamImpl).
	child := s.span.child(extProcSpanName)
	if child != nil {
		child.tag("upstream_cluster", cfg.cluster)
		child.tag("upstream_address", cfg.cluster)
		child.tag("component", "proxy")
		s.cleanups = append(s.cleanups, func() { child.finish(s.env) })
	}
	md := metadata.MD{}
	for _, kv := range cfg.initialMetadata {
		md.Append(kv[0], kv[1])
	}
	child.grpcMetadata(md)
	if len(md) > 0 {
		sctx = metadata.NewOutgoingContext(sctx, md)
	}
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(sctx)
	if err != nil {
		s.log.Warn("ext_proc stream open failed", "cluster", cfg.cluster, "error", err)
		return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
	}
	f.stat(s, cfg, "streams_started")
	if err := stream.Send(f.request(s, cfg)); err != nil {
		s.log.Warn("ext_proc send failed", "cluster", cfg.cluster, "error", err)
		return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
	}
	f.stat(s, cfg, "stream_msgs_sent")
	type recv struct {
		resp *extprocv3.ProcessingResponse
		err  error
	}
	ch := make(chan recv, 1)
	go func() {
		r, err := stream.Recv()
		ch <- recv{r, err}
	}()
	timer := time.NewTimer(cfg.messageTimeout)
	defer timer.Stop()
	var resp *extprocv3.ProcessingResponse
	select {
	case r := <-ch:
		if r.err != nil {
			s.log.Warn("ext_proc stream failed", "cluster", cfg.cluster, "error", r.err)
			return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
		}
		resp = r.resp
	case <-timer.C:
		s.log.Warn("ext_proc message timeout", "cluster", cfg.cluster, "timeout", cfg.messageTimeout)
		return f.fail(s, cfg, http.StatusGatewayTimeout, "message_timeouts")
	case <-ctx.Done():
		return false
	}
	f.stat(s, cfg, "stream_msgs_received")
	if cfg.allowModeOverride && resp.GetRequestHeaders() != nil &&
		resp.GetModeOverride().GetResponseHeaderMode() == extprocfv3.ProcessingMode_SEND {
		kept = true
		s.encodeHooks = append(s.encodeHooks, func(code int, h http.Header) bool {
			defer cancel()
			defer stream.CloseSend()
			return f.encodeHeaders(s, cfg, stream, code, h)
		})
		s.cleanups = append(s.cleanups, cancel)
	} else {
		_ = stream.CloseSend()
	}
	switch {
	case resp.GetRequestHeaders() != nil:
		cr := resp.GetRequestHeaders().GetResponse()
		if cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE {
			s.log.Warn("ext_proc CONTINUE_AND_REPLACE is not implemented by the stand-in")
			return f.fail(s, cfg, cfg.statusOnError, "spurious_msgs_received")
		}
		if err := f.applyRequestMutation(s, cfg, cr.GetHeaderMutation()); err != nil {
			s.log.Warn("ext_proc header mutation rejected", "error", err)
			return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
		}
		if cr.GetClearRouteCache() && !cfg.disableClearRC {
			s.clearRouteCache()
		}
		return true
	case resp.GetImmediateResponse() != nil:
		if cfg.disableImmediate {
			return f.fail(s, cfg, cfg.statusOnError, "spurious_msgs_received")
		}
		f.stat(s, cfg, "immediate_responses")
		ir := resp.GetImmediateResponse()
		code := int(ir.GetStatus().GetCode())
		switch {
		case ir.GetStatus() == nil || code == 0:
			code = http.StatusOK
		case code < 200 || code > 999:
			code = http.StatusInternalServerError
		}
		var hdrs Headers
		if _, err := applyMutation(&hdrs, ir.GetHeaders(), cfg.rules, nil); err != nil {
			s.log.Warn("ext_proc immediate response headers rejected", "error", err)
			return f.fail(s, cfg, cfg.statusOnError, "streams_failed")
		}
		s.sendLocalReply(code, string(ir.GetBody()), hdrs)
		return false
	default:
		s.log.Warn("ext_proc unexpected response", "type", fmt.Sprintf("%T", resp.GetResponse()))
		return f.fail(s, cfg, cfg.statusOnError, "spurious_msgs_received")
	}
}

// encodeHeaders sends the upstream response headers on the request's ext_proc stream (after a
// mode_override asked for them) and applies the answer to h. It returns false when it answered the
// request locally instead (stream error or timeout without failure_mode_allow).
func (f *extProc) encodeHeaders(s *Stream, cfg extProcConfig, stream extprocv3.ExternalProcessor_ProcessClient, code int, h http.Header) bool {
	hm, keys := responseHeaderMap(cfg.forward, code, h)
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm}}}
	if err := stream.Send(req); err != nil {
		return f.failResponse(s, cfg, h, cfg.statusOnError, "streams_failed")
	}
	f.stat(s, cfg, "stream_msgs_sent")
	ch := make(chan *extprocv3.ProcessingResponse, 1)
	go func() {
		r, _ := stream.Recv()
		ch <- r
	}()
	timer := time.NewTimer(cfg.messageTimeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		if r.GetResponseHeaders() == nil {
			return f.failResponse(s, cfg, h, cfg.statusOnError, "streams_failed")
		}
		f.stat(s, cfg, "stream_msgs_received")
		var hl Headers
		for _, k := range keys {
			for _, v := range h[k] {
				hl.Add(strings.ToLower(k), v)
			}
		}
		if _, err := applyMutation(&hl, r.GetResponseHeaders().GetResponse().GetHeaderMutation(), cfg.rules, nil); err != nil {
			return f.failResponse(s, cfg, h, cfg.statusOnError, "streams_failed")
		}
		for k := range h {
			delete(h, k)
		}
		for _, e := range hl {
			h.Add(e.Key, e.Value)
		}
		return true
	case <-timer.C:
		return f.failResponse(s, cfg, h, http.StatusGatewayTimeout, "message_timeouts")
	}
}

// responseHeaderMap is the header map of a response_headers message: :status first, then h's
// headers sorted by name, lower case, those forward_rules lets through. keys are all of h's names.
func responseHeaderMap(fr forwardRules, code int, h http.Header) (hm *corev3.HeaderMap, keys []string) {
	hm = &corev3.HeaderMap{}
	if fr.allows(":status") {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: ":status", RawValue: []byte(strconv.Itoa(code))})
	}
	keys = make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !fr.allows(strings.ToLower(k)) {
			continue
		}
		for _, v := range h[k] {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: strings.ToLower(k), RawValue: []byte(v)})
		}
	}
	return hm, keys
}

// failResponse is fail for the response phase: the upstream headers are dropped before the local reply.
func (f *extProc) failResponse(s *Stream, cfg extProcConfig, h http.Header, status int, counter string) bool {
	if cfg.failureModeAllow {
		f.stat(s, cfg, counter)
		f.stat(s, cfg, "failure_mode_allowed")
		return true
	}
	for k := range h {
		delete(h, k)
	}
	return f.fail(s, cfg, status, counter)
}

// fail ends the filter after an ext_proc failure: with failure_mode_allow the request continues
// unmodified, otherwise it is answered locally with status and never forwarded.
func (f *extProc) fail(s *Stream, cfg extProcConfig, status int, counter string) bool {
	f.stat(s, cfg, counter)
	if cfg.failureModeAllow {
		f.stat(s, cfg, "failure_mode_allowed")
		return true
	}
	s.sendLocalReply(status, "", nil)
	return false
}

// request builds the ProcessingRequest Envoy sends for request headers.
func (f *extProc) request(s *Stream, cfg extProcConfig) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	add := func(k, v string) {
		if cfg.forward.allows(k) {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
		}
	}
	add(":authority", s.Authority)
	add(":path", s.Path)
	add(":method", s.Method)
	add(":scheme", s.Scheme)
	for _, h := range s.Headers {
		add(h.Key, h.Value)
	}
	req := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     hm,
			EndOfStream: s.endOfStream,
		}},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  extprocfv3.ProcessingMode_NONE,
			ResponseBodyMode: extprocfv3.ProcessingMode_NONE,
		},
	}
	if len(cfg.attributes) > 0 {
		fields := map[string]*structpb.Value{}
		for _, a := range cfg.attributes {
			if v := attribute(s, a); v != nil {
				fields[a] = v
			}
		}
		if len(fields) > 0 {
			req.Attributes = map[string]*structpb.Struct{ExtProcFilter: {Fields: fields}}
		}
	}
	return req
}

// attribute evaluates one Envoy request attribute, nil when unknown or absent.
func attribute(s *Stream, name string) *structpb.Value {
	switch name {
	case "source.address":
		return structpb.NewStringValue(s.Remote.String())
	case "source.port":
		return structpb.NewNumberValue(float64(s.Remote.Port()))
	case "destination.address":
		return structpb.NewStringValue(s.Local.String())
	case "destination.port":
		return structpb.NewNumberValue(float64(s.Local.Port()))
	case "request.path":
		return structpb.NewStringValue(s.Path)
	case "request.url_path":
		p, _, _ := strings.Cut(s.Path, "?")
		return structpb.NewStringValue(p)
	case "request.host":
		return structpb.NewStringValue(s.Authority)
	case "request.method":
		return structpb.NewStringValue(s.Method)
	case "request.scheme":
		return structpb.NewStringValue(s.Scheme)
	case "request.protocol":
		return structpb.NewStringValue(s.Proto)
	case "request.id":
		if v, ok := s.Headers.Get("x-request-id"); ok {
			return structpb.NewStringValue(v)
		}
	}
	return nil
}

// applyRequestMutation applies a HeaderMutation to the request, pseudo-headers included.
func (f *extProc) applyRequestMutation(s *Stream, cfg extProcConfig, m *extprocv3.HeaderMutation) error {
	rejected, err := applyMutation(&s.Headers, m, cfg.rules, func(k, v string) bool {
		switch k {
		case ":path":
			s.Path = v
		case ":method":
			s.Method = v
		case ":authority", "host":
			s.Authority = v
		case ":scheme":
			s.Scheme = v
		default:
			return false
		}
		return true
	})
	for range rejected {
		f.stat(s, cfg, "rejected_header_mutations")
	}
	return err
}

// applyMutation applies remove_headers then set_headers with Envoy's ext_proc rules: only
// raw_value is read (a header with only value becomes empty), value and raw_value together is an
// error, append_action 0 with append unset overwrites. pseudo handles pseudo-headers (true when
// handled).
func applyMutation(h *Headers, m *extprocv3.HeaderMutation, rules mutationChecker, pseudo func(k, v string) bool) (rejected int, err error) {
	for _, k := range m.GetRemoveHeaders() {
		if !validHeaderName(k) {
			return rejected, fmt.Errorf("invalid character in remove_headers %q", k)
		}
		k = strings.ToLower(k)
		switch rules.check(k, true) {
		case checkOK:
			h.Del(k)
		case checkIgnore:
			rejected++
		case checkFail:
			return rejected, fmt.Errorf("invalid attempt to remove %s", k)
		}
	}
	for _, sh := range m.GetSetHeaders() {
		if sh.GetHeader() == nil {
			continue
		}
		if sh.GetHeader().GetValue() != "" && len(sh.GetHeader().GetRawValue()) > 0 {
			return rejected, errors.New("only one of value or raw_value in the HeaderValue message should be set")
		}
		k := strings.ToLower(sh.GetHeader().GetKey())
		v := string(sh.GetHeader().GetRawValue())
		if !validHeaderName(k) || !validHeaderValue(v) {
			return rejected, fmt.Errorf("invalid character in set_headers %q", k)
		}
		switch rules.check(k, false) {
		case checkIgnore:
			rejected++
			continue
		case checkFail:
			return rejected, fmt.Errorf("invalid attempt to modify %s", k)
		}
		if pseudo != nil && pseudo(k, v) {
			continue
		}
		if strings.HasPrefix(k, ":") {
			continue
		}
		action := sh.GetAppendAction()
		if action == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			//lint:ignore SA1019 Envoy ext_proc still reads the deprecated append field.
			if sh.GetAppend().GetValue() {
				h.Add(k, v)
			} else {
				h.Set(k, v)
			}
			continue
		}
		applyAdd(h, k, v, action)
	}
	return rejected, nil
}

type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

// mutationChecker implements Envoy's HeaderMutationRules.
type mutationChecker struct {
	allowAllRouting, allowEnvoy, disallowSystem, disallowAll, disallowIsError bool
	allow, disallow                                                           *regexp.Regexp
}

func parseRules(r *mutationv3.HeaderMutationRules) (mutationChecker, error) {
	c := mutationChecker{
		allowAllRouting: r.GetAllowAllRouting().GetValue(),
		allowEnvoy:      r.GetAllowEnvoy().GetValue(),
		disallowSystem:  r.GetDisallowSystem().GetValue(),
		disallowAll:     r.GetDisallowAll().GetValue(),
		disallowIsError: r.GetDisallowIsError().GetValue(),
	}
	var err error
	if e := r.GetAllowExpression(); e != nil {
		if c.allow, err = regexp.Compile(e.GetRegex()); err != nil {
			return c, fmt.Errorf("mutation_rules.allow_expression: %w", err)
		}
	}
	if e := r.GetDisallowExpression(); e != nil {
		if c.disallow, err = regexp.Compile(e.GetRegex()); err != nil {
			return c, fmt.Errorf("mutation_rules.disallow_expression: %w", err)
		}
	}
	return c, nil
}

func (c mutationChecker) check(k string, remove bool) checkResult {
	deny := checkIgnore
	if c.disallowIsError {
		deny = checkFail
	}
	if remove && (strings.HasPrefix(k, ":") || k == "host") {
		return checkIgnore
	}
	if c.disallowAll {
		return deny
	}
	if strings.HasPrefix(k, ":") && c.disallowSystem {
		return deny
	}
	switch k {
	case "host", ":authority", ":scheme", ":method":
		if !c.allowAllRouting {
			return deny
		}
		return checkOK
	}
	if strings.HasPrefix(k, "x-envoy") && !c.allowEnvoy {
		return deny
	}
	if c.disallow != nil && c.disallow.MatchString(k) {
		return deny
	}
	if c.allow != nil && c.allow.MatchString(k) {
		return checkOK
	}
	return checkOK
}
