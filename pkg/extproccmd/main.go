// Package extproccmd is cmd/extproc: configuration, assembly and lifecycle of the ext_proc service
// (gRPC ExternalProcessor + health on one listener, /healthz and /readyz on an admin listener), and
// the `extproc resolve` subcommand operators use to see what a VM would be signed as.
package extproccmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/extproc"
	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/version"
)

// ServiceName is the OpenTelemetry service.name of cmd/extproc (OTEL_SERVICE_NAME overrides it).
const ServiceName = "metaproxy-extproc"

const usageHead = `extproc: the metaproxy ext_proc service.

Envoy's per-network metadata listeners (pushed by cmd/xds) call this gRPC service for every VM
request. It resolves the VM from the listener's network (gRPC metadata) and the downstream address
(request attribute source.address) through Neutron, removes every identity header the VM sent, and
adds X-Instance-ID, X-Tenant-ID, X-Forwarded-For and X-Instance-ID-Signature for nova's metadata API.
It fails closed: no port -> 404, several -> 500, Neutron unreachable with nothing cached -> 503.

Usage:
  extproc [flags]                       serve
  extproc resolve --network ID --ip ADDR [flags]
                                        print what a VM at ADDR would be signed as
  extproc --version

Observability: /metrics, /healthz and /readyz on --admin-listen. Traces are exported over OTLP
when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, with
OTEL_EXPORTER_OTLP_PROTOCOL grpc or http/protobuf (default); see docs/observability.md.

Who may ask: a signature is a credential for the VM's metadata, so only the node's Envoy may get
one. On a UNIX socket (the default) the socket is created mode 0660 and every connection's peer
(SO_PEERCRED) must be one of --allowed-peers (default root and metaproxy-envoy); on TCP, only
clients with a certificate of --tls-client-ca (mutual TLS) are served. Others are closed before
anything is read, logged once per peer and counted (metaproxy_extproc_connections_refused_total).

Port source (choose one): --ports-file, Neutron (--os-cloud, --neutron-url, or $OS_CLOUD / OS_*), --demo.
Shared secret: --secret-file (not readable by other users), else $METAPROXY_SHARED_SECRET (removed
from the environment once read), else metadata_proxy_shared_secret from --metadata-agent-ini. It is
never logged.

Flags:
`

// Main runs cmd/extproc with args (without the program name) until ctx is done.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "resolve" {
		return runResolve(ctx, args[1:], stdout, stderr)
	}
	var showVersion bool
	cfg, _, err := parseArgs("extproc", args,
		func(fs *flag.FlagSet) { fs.BoolVar(&showVersion, "version", false, "print the version and exit") },
		func(fs *flag.FlagSet) { fmt.Fprint(stderr, usageHead); fs.SetOutput(stderr); fs.PrintDefaults() })
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if showVersion {
		fmt.Fprintln(stdout, "extproc", version.String())
		return nil
	}
	verr := cfg.Validate()
	log, err := telemetry.NewLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		log = slog.New(slog.NewTextHandler(stderr, nil)) // Validate says what is wrong with the level or format
	}
	sec, serr := prepareListener(cfg, log)
	if err := errors.Join(verr, serr); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	tel, err := telemetry.New(ctx, telemetry.Options{ServiceName: ServiceName, Version: version.String()})
	if err != nil {
		return err
	}
	defer tel.Close(ctx, log) // flush the last spans
	w, err := assemble(cfg, log, true, tel)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, sec, w, tel, log)
}

// serve runs the service until ctx is done. Both listeners are opened first, so that an address in
// use is an error at start, and nothing reports ready (gRPC health, /readyz) before both are bound.
func serve(ctx context.Context, cfg Config, sec *listenerSecurity, w *service, tel *telemetry.Telemetry, log *slog.Logger) error {
	refusals, err := newRefusals(log, tel.MeterProvider)
	if err != nil {
		return fmt.Errorf("refusal metrics: %w", err)
	}
	raw, err := listen.Open(cfg.Listen)
	if err != nil {
		return err
	}
	l, grpcOpts, err := sec.apply(raw, refusals, log)
	if err != nil {
		raw.Close()
		return err
	}
	var adminL net.Listener
	adminAddr := "off"
	if cfg.AdminListen != "" {
		if adminL, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			l.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
		adminAddr = adminL.Addr().String()
	}
	g, health := extproc.NewGRPCServer(extproc.NewServer(w.decider, log, extproc.WithMetrics(tel.MeterProvider)), grpcOpts...)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	listenAddr := cfg.Listen
	if l.Addr().Network() == "tcp" {
		listenAddr = l.Addr().String() // the port bound, when the configuration asked for 0
	}
	log.Info("extproc started", "version", version.String(), "listen", listenAddr, "admin", adminAddr,
		"source", w.source, "secret_from", w.secretFrom, "cache_ttl", cfg.Cache.TTL, "stale_window", cfg.Cache.StaleWindow,
		"tracing", tracingState(tel))

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() { errc <- extproc.Serve(ctx, g, l, cfg.ShutdownGrace) })
	if adminL != nil {
		admin := &http.Server{Handler: adminMux(w.ready, tel.MetricsHandler()), ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() { errc <- serveHTTP(ctx, admin, adminL) })
	}
	wg.Go(func() {
		// gRPC health turns SERVING the first time the service is ready and stays so: answers
		// still cached (or negative) can be served while Neutron is down, so Envoy's health check
		// must not flap with Neutron. /readyz and metaproxy_extproc_ready do follow it.
		w.ready.watch(ctx, func(ready bool, why string) {
			if ready {
				extproc.SetServing(health, true)
				log.Info("ready: serving ext_proc", "listen", cfg.Listen)
			} else {
				log.Warn("not ready: /readyz answers 503", "reason", why)
			}
		})
	})

	var first error
	select {
	case first = <-errc:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	log.Info("extproc stopped")
	return first
}

// MetricNames lists every metric family cmd/extproc exports on /metrics besides the Go runtime's
// (go_*) and the process's (process_*).
func MetricNames() []string {
	return append(decide.MetricNames(), extproc.MetricStreams, extproc.MetricStreamsInFlight, extproc.MetricPanics, MetricReady, MetricPortSourceLastUpSecs, MetricConnectionsRefused, MetricNeutronFailures)
}

func tracingState(tel *telemetry.Telemetry) string {
	if !tel.Tracing {
		return "off (no OTEL_EXPORTER_OTLP_ENDPOINT)"
	}
	return "otlp " + tel.Endpoint
}

func adminMux(r *readiness, metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := r.state(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

// serveHTTP serves s on l until ctx is done, then shuts it down (5 s at most).
func serveHTTP(ctx context.Context, s *http.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin listener %s: %w", l.Addr(), err)
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.Shutdown(shut)
	}
}
