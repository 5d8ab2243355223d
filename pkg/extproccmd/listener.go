package extproccmd

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
)

// MetricConnectionsRefused counts connections to the ext_proc listener refused before a request
// was read: reason peer_credentials (a UNIX socket peer not in --allowed-peers) or tls (a TCP
// client without a valid client certificate).
const MetricConnectionsRefused = "metaproxy_extproc_connections_refused_total"

// handshakeTimeout bounds a TLS handshake, so that connections that never finish one do not
// pile up (gRPC's own default is 120 s).
const handshakeTimeout = 10 * time.Second

// listenerSecurity is what protects the ext_proc listener, prepared before anything listens.
type listenerSecurity struct {
	peers listen.Peers     // for a UNIX socket
	tls   *tlsfiles.Server // for TCP; nil without --tls-*
	demo  bool             // plain-text TCP allowed (--demo)
}

// prepareListener resolves --allowed-peers and loads the TLS files, reporting every problem at
// once. Validate has already checked which of them the listen address needs.
func prepareListener(cfg Config, log *slog.Logger) (*listenerSecurity, error) {
	s := &listenerSecurity{demo: cfg.Demo}
	var errs []error
	if listen.IsUnix(cfg.Listen) || cfg.Listen == listen.Systemd {
		// The defaults name a user that exists only where deploy/systemd created it: a list of just
		// those names (in any order) leaves out the ones this host lacks; any other list must
		// resolve entirely.
		isDefault := slices.Equal(slices.Sorted(slices.Values(cfg.AllowedPeers)), slices.Sorted(slices.Values(listen.DefaultPeers)))
		peers, skipped, err := listen.ResolvePeers(cfg.AllowedPeers, isDefault)
		if err != nil {
			errs = append(errs, fmt.Errorf("--allowed-peers: %w", err))
		}
		if len(skipped) > 0 {
			log.Info("allowed peers not on this host, left out", "skipped", skipped)
		}
		s.peers = peers
	}
	if cfg.TLS.Cert != "" && cfg.TLS.Key != "" && cfg.TLS.ClientCA != "" {
		srv, err := tlsfiles.NewServer(tlsfiles.Files{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, ClientCA: cfg.TLS.ClientCA}, tlsfiles.Options{
			AllowedSANs: cfg.TLS.ClientSANs, Flags: [3]string{"--tls-cert", "--tls-key", "--tls-client-ca"}, Log: log,
		})
		if err != nil {
			errs = append(errs, err)
		}
		s.tls = srv
	}
	return s, errors.Join(errs...)
}

// apply protects l: a UNIX socket gets the peer check, TCP mutual TLS (plain text only with
// --demo). Refused connections are logged and counted in refusals.
func (s *listenerSecurity) apply(l net.Listener, refusals *listen.Refusals, log *slog.Logger) (net.Listener, []grpc.ServerOption, error) {
	switch l.Addr().Network() {
	case "unix":
		log.Info("ext_proc on a UNIX socket: peers checked", "socket", l.Addr().String(), "allowed_peers", s.peers.String())
		return listen.CheckPeers(l, s.peers, refusals), nil, nil
	case "tcp":
		switch {
		case s.tls != nil:
			return l, []grpc.ServerOption{grpc.Creds(s.tls.Credentials(refusals.RefuseHandshake)), grpc.ConnectionTimeout(handshakeTimeout)}, nil
		case s.demo:
			log.Warn("ext_proc on plain-text TCP (--demo): anyone who can reach it gets signatures; never outside a demo", "listen", l.Addr().String())
			return l, nil, nil
		}
		return nil, nil, fmt.Errorf("systemd passed a TCP socket (%s): ext_proc on TCP is served only with mutual TLS: give --tls-cert, --tls-key and --tls-client-ca, or make the .socket unit's ListenStream= a path", l.Addr())
	}
	return nil, nil, fmt.Errorf("listener %s: unexpected network %q", l.Addr(), l.Addr().Network())
}

// newRefusals returns the refusal log and counter of cmd/extproc.
func newRefusals(log *slog.Logger, mp metric.MeterProvider) (*listen.Refusals, error) {
	var meter metric.Meter
	if mp != nil {
		meter = mp.Meter("github.com/metaproxy/metaproxy/pkg/extproccmd")
	}
	return listen.NewRefusals(log, meter, "metaproxy.extproc.connections.refused")
}
