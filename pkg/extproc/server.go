// Package extproc is the gRPC side of cmd/extproc: the envoy.service.ext_proc.v3
// ExternalProcessor stream loop and the gRPC health service, on one server (gRPC's standard codec;
// its listener comes from package listen). What to answer is decided per message by a Processor,
// which this package knows nothing of (no Neutron, no signature): it moves messages, closes streams
// cleanly, answers a request whose Processor panicked with a 500, and stops within a bounded grace.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Processor answers the request_headers message of one stream. ctx is the stream's: it carries the
// stream's initial metadata (gRPC's incoming metadata). When the answer asks Envoy for the
// upstream's response headers (mode_override), check is called with the upstream's status once they
// arrive on the stream; it is nil otherwise.
type Processor interface {
	RequestHeaders(ctx context.Context, req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, check func(ctx context.Context, status int))
}

// Server implements ExternalProcessor over a Processor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	proc Processor
	log  *slog.Logger

	inFlight metric.Int64UpDownCounter // nil: not measured
	streams  metric.Int64Counter
	panics   metric.Int64Counter

	lastPanicLog atomic.Int64 // unix nanoseconds of the last panic logged
}

// MetricStreamsInFlight, MetricStreams and MetricPanics are the metrics a Server with WithMetrics
// exports.
const (
	MetricStreamsInFlight = "metaproxy_extproc_streams_in_flight"
	MetricStreams         = "metaproxy_extproc_streams_total"
	MetricPanics          = "metaproxy_extproc_panics_total"
)

// ServerOption configures a Server.
type ServerOption func(*Server) error

// WithMetrics counts streams on mp: those open now (MetricStreamsInFlight), all that were opened
// (MetricStreams), and the panics recovered while answering one (MetricPanics).
func WithMetrics(mp metric.MeterProvider) ServerOption {
	return func(s *Server) error {
		meter := mp.Meter("github.com/metaproxy/metaproxy/pkg/extproc")
		var err1, err2, err3 error
		s.inFlight, err1 = meter.Int64UpDownCounter("metaproxy.extproc.streams.in_flight", metric.WithUnit("{stream}"),
			metric.WithDescription("ext_proc streams (one per VM request) open now."))
		s.streams, err2 = meter.Int64Counter("metaproxy.extproc.streams", metric.WithUnit("{stream}"),
			metric.WithDescription("ext_proc streams (one per VM request) opened by Envoy."))
		s.panics, err3 = meter.Int64Counter("metaproxy.extproc.panics", metric.WithUnit("{panic}"),
			metric.WithDescription("Panics recovered while answering an ext_proc stream: each answered its request with a 500 (a bug: report it with the logged stack)."))
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		// Export them from the start, so that the first stream is a change a rate() can see.
		s.inFlight.Add(context.Background(), 0)
		s.streams.Add(context.Background(), 0)
		s.panics.Add(context.Background(), 0)
		return nil
	}
}

// NewServer returns a Server that answers with proc. An option that fails (an instrument that
// cannot be created) is logged and skipped: metrics never stop the service.
func NewServer(proc Processor, log *slog.Logger, opts ...ServerOption) *Server {
	s := &Server{proc: proc, log: log}
	for _, o := range opts {
		if err := o(s); err != nil {
			log.Error("ext_proc server option", "error", err)
			s.inFlight, s.streams, s.panics = nil, nil, nil
		}
	}
	return s
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// Process handles one stream, i.e. one HTTP request from a VM. Envoy sends request_headers (the
// only phase cmd/xds asks for); any other phase, should a listener be configured to send it, is
// acknowledged unchanged so the request is neither stalled nor altered.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	if s.inFlight != nil {
		s.streams.Add(ctx, 1)
		s.inFlight.Add(ctx, 1)
		defer s.inFlight.Add(context.WithoutCancel(ctx), -1)
	}
	var check func(context.Context, int)
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil
			}
			return status.Errorf(codes.Unknown, "receive: %v", err)
		}
		resp, err := s.answer(ctx, req, &check)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return sendError(ctx, err)
		}
	}
}

// answer returns the response to one message of a stream. check is the stream's pending check of
// the upstream's status (see Processor). A panic while answering (a bug: bad input gets an error
// response, never a panic) answers that request with a 500 immediate response, and is counted
// and logged: it costs one request, not the process.
func (s *Server) answer(ctx context.Context, req *extprocv3.ProcessingRequest, check *func(context.Context, int)) (resp *extprocv3.ProcessingResponse, err error) {
	defer func() {
		if r := recover(); r != nil {
			*check = nil
			resp, err = s.recovered(ctx, r), nil
		}
	}()
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		resp, *check = s.proc.RequestHeaders(ctx, req)
		return resp, nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		if f := *check; f != nil {
			*check = nil
			f(ctx, responseStatus(req.GetResponseHeaders()))
		}
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}, nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}, nil
	default:
		return nil, status.Error(codes.InvalidArgument, "processing request with no phase")
	}
}

// recovered counts and logs the panic r (with its stack, at most once a second) and returns the
// 500 immediate response that answers the request instead.
func (s *Server) recovered(ctx context.Context, r any) *extprocv3.ProcessingResponse {
	if s.panics != nil {
		s.panics.Add(ctx, 1)
	}
	now := time.Now().UnixNano()
	if last := s.lastPanicLog.Load(); now-last >= int64(time.Second) && s.lastPanicLog.CompareAndSwap(last, now) {
		s.log.Error("panic while answering an ext_proc stream: the request was answered 500; this is a bug, report it with this stack",
			"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode_InternalServerError},
		Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "content-type", RawValue: []byte("text/plain; charset=utf-8")},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}},
		Body:    []byte("Internal error identifying this instance\n"),
		Details: "metaproxy_panic",
	}}}
}

// sendError turns a failed send into the stream's end: nil when Envoy went away.
func sendError(ctx context.Context, err error) error {
	if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
		return nil
	}
	return status.Errorf(codes.Unknown, "send: %v", err)
}

// responseStatus reads :status from response headers (0 when absent or not a number).
func responseStatus(h *extprocv3.HttpHeaders) int {
	for _, hv := range h.GetHeaders().GetHeaders() {
		if hv.GetKey() == ":status" {
			v := hv.GetRawValue()
			if len(v) == 0 {
				v = []byte(hv.GetValue())
			}
			n, _ := strconv.Atoi(string(v))
			return n
		}
	}
	return 0
}

// NewGRPCServer returns a gRPC server carrying the ExternalProcessor and the health service.
// Health starts NOT_SERVING; the caller flips it with SetServing once it can answer.
func NewGRPCServer(s *Server, opts ...grpc.ServerOption) (*grpc.Server, *health.Server) {
	g := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(g, s)
	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	h.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g, h)
	return g, h
}

// SetServing reports the ext_proc service (and the server as a whole) serving or not.
func SetServing(h *health.Server, serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	h.SetServingStatus("", st)
	h.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, st)
}

// DefaultShutdownGrace is how long Serve lets the streams in flight finish once ctx is done: well
// above the longest decision (a Neutron lookup within the listener's message_timeout), and below
// systemd's TimeoutStopSec of the unit (deploy/systemd/metaproxy-extproc.service: 20 s), with room
// left for the flush of the last spans (5 s at most).
const DefaultShutdownGrace = 10 * time.Second

// Serve runs g on l until ctx is done, then stops gracefully: no new stream is accepted and those
// in flight may finish for up to grace; then the streams left (one whose check waits on a slow
// nova, a client that never ends its stream) are cut (Stop), so that shutdown is bounded.
func Serve(ctx context.Context, g *grpc.Server, l net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		g.Stop()
		<-stopped
	}
	return nil
}
