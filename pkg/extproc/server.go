// Package extproc is the gRPC side of cmd/extproc: the envoy.service.ext_proc.v3
// ExternalProcessor stream loop and the gRPC health service, on one server (its listener comes
// from package listen). What to answer is decided per message by a Processor; this package only moves
// messages and closes streams cleanly.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Processor answers the request_headers message of one stream. md is the stream's initial metadata.
// When the answer asks Envoy for the upstream's response headers (mode_override), check is called
// with the upstream's status once they arrive on the stream; it is nil otherwise.
type Processor interface {
	RequestHeaders(ctx context.Context, md metadata.MD, req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, check func(ctx context.Context, status int))
}

// Server implements ExternalProcessor over a Processor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	proc Processor
	log  *slog.Logger

	inFlight metric.Int64UpDownCounter // nil: not measured
	streams  metric.Int64Counter
}

// MetricStreamsInFlight and MetricStreams are the metrics a Server with WithMetrics exports.
const (
	MetricStreamsInFlight = "metaproxy_extproc_streams_in_flight"
	MetricStreams         = "metaproxy_extproc_streams_total"
)

// ServerOption configures a Server.
type ServerOption func(*Server) error

// WithMetrics counts streams on mp: those open now (MetricStreamsInFlight) and all that were
// opened (MetricStreams).
func WithMetrics(mp metric.MeterProvider) ServerOption {
	return func(s *Server) error {
		meter := mp.Meter("github.com/metaproxy/metaproxy/pkg/extproc")
		var err1, err2 error
		s.inFlight, err1 = meter.Int64UpDownCounter("metaproxy.extproc.streams.in_flight", metric.WithUnit("{stream}"),
			metric.WithDescription("ext_proc streams (one per VM request) open now."))
		s.streams, err2 = meter.Int64Counter("metaproxy.extproc.streams", metric.WithUnit("{stream}"),
			metric.WithDescription("ext_proc streams (one per VM request) opened by Envoy."))
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		// Export both from the start, so that the first stream is a change a rate() can see.
		s.inFlight.Add(context.Background(), 0)
		s.streams.Add(context.Background(), 0)
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
			s.inFlight, s.streams = nil, nil
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
	md, _ := metadata.FromIncomingContext(ctx)
	var check func(context.Context, int)
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil
			}
			return status.Errorf(codes.Unknown, "receive: %v", err)
		}
		var resp *extprocv3.ProcessingResponse
		switch req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp, check = s.proc.RequestHeaders(ctx, md, req)
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			if check != nil {
				check(ctx, responseStatus(req.GetResponseHeaders()))
				check = nil
			}
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
		default:
			return status.Error(codes.InvalidArgument, "processing request with no phase")
		}
		if err := stream.Send(resp); err != nil {
			return sendError(ctx, err)
		}
	}
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

// Serve runs g on l until ctx is done, then stops gracefully.
func Serve(ctx context.Context, g *grpc.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
		g.GracefulStop()
		return nil
	}
}
