package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
)

// Floor is the minimal ext_proc server metaproxy's decision path is compared with: it answers every
// request_headers message with the same fixed header mutation (four set headers in raw_value, the
// same removals), without looking at the request. Whatever cmd/extproc costs above it is the price
// of decoding, the cache and the answer it builds.
type Floor struct {
	extprocv3.UnimplementedExternalProcessorServer
	resp *extprocv3.ProcessingResponse
}

var _ extprocv3.ExternalProcessorServer = (*Floor)(nil)

// NewFloor returns the floor server.
func NewFloor() *Floor {
	set := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	return &Floor{resp: &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{
					set("x-instance-id", "0a1b2c3d-0000-4000-8000-000000000001"),
					set("x-tenant-id", "0a1b2c3d4e5f40718293a4b5c6d7e8f9"),
					set("x-instance-id-signature", strings.Repeat("0f", 32)),
					set("x-forwarded-for", "10.0.0.5"),
				},
				RemoveHeaders: []string{"x-instance-id", "x-instance-id-signature", "x-tenant-id", "x-forwarded-for",
					"x-neutron-network-id", "x-neutron-router-id", "x-ovn-network-id", "x-metadata-provider", "x-metadata-provider-signature"},
			}},
		}},
	}}
}

// Process answers every message of the stream with the fixed response until the client closes.
func (f *Floor) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) || stream.Context().Err() != nil {
				return nil
			}
			return err
		}
		if err := stream.Send(f.resp); err != nil {
			return err
		}
	}
}

// ServeFloor serves the floor on l until ctx is done.
func ServeFloor(ctx context.Context, l net.Listener) error {
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, NewFloor())
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("floor: %w", err)
	case <-ctx.Done():
		g.Stop()
		return nil
	}
}
