package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// Keepalive settings of the xDS gRPC server. The server pings idle connections every
// keepaliveTime and drops them when a ping is not answered within keepaliveTimeout, so a vanished
// Envoy does not hold a stream (and a "connected node") forever. Clients may ping as often as every
// minClientPing (the bootstrap in envoy/ pings every 30 s); faster pings are answered with GOAWAY.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	minClientPing    = 10 * time.Second
	// maxStreams bounds concurrent streams per connection: each Envoy opens one ADS stream, or one
	// per type without ADS, so a few is plenty.
	maxStreams = 100
	// readBufferSize is gRPC's read buffer per connection (default 32 KiB). Envoys send little
	// (ACKs of a few hundred bytes, one first request of tens of KiB), and over TLS, as in
	// production, gRPC cannot pool the buffer: every connected Envoy held its own 32 KiB on top of
	// the records crypto/tls already buffers (loadgen xds with mutual TLS, 5000 Envoys: 956 MiB
	// with every node configured at the default, 770-830 MiB with 4 KiB).
	readBufferSize = 4 << 10
)

// NewGRPCServer returns a gRPC server that serves ADS (state of the world and delta, chosen by the
// client), plus the per-type LDS/RDS/CDS services and grpc.health.v1, from snaps. opts are added to
// the server's (TLS credentials, NodeAuthorizer's interceptors).
func NewGRPCServer(ctx context.Context, snaps *Snapshots, cb *Callbacks, opts ...grpc.ServerOption) *grpc.Server {
	gs := grpc.NewServer(append([]grpc.ServerOption{
		grpc.ForceServerCodecV2(newCodec()),
		grpc.MaxConcurrentStreams(maxStreams),
		grpc.ReadBufferSize(readBufferSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minClientPing, PermitWithoutStream: true}),
	}, opts...)...)
	xds := serverv3.NewServer(ctx, snaps.Cache(), cb)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xds)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xds)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	return gs
}

// Serve serves gs on lis until ctx is done, then stops gracefully (open xDS streams are long-lived,
// so after stopGrace they are cut).
func Serve(ctx context.Context, gs *grpc.Server, lis net.Listener, log *slog.Logger) error {
	const stopGrace = 5 * time.Second
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	log.Info("xds server listening", "address", lis.Addr().String())
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve xds: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		gs.Stop()
		<-stopped
	}
	<-errc
	return nil
}
