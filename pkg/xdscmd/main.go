// Package xdscmd is cmd/xds: metaproxy's xDS control plane. It discovers which Neutron networks
// (and routers) each Envoy node serves, translates them into listeners bound in the networks'
// namespaces plus the nova_metadata and extproc clusters, and serves one snapshot per node over ADS.
// `xds bootstrap` prints the Envoy bootstrap that connects a node to it.
package xdscmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/metaproxy/metaproxy/pkg/chassiscmd"
	"github.com/metaproxy/metaproxy/pkg/cmdflags"
	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
	"github.com/metaproxy/metaproxy/pkg/version"
	"github.com/metaproxy/metaproxy/pkg/xds/serve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

const usageHead = `Usage: xds [flags]
       xds bootstrap [--node-id ID] [--xds-address HOST:PORT] [--admin-port N] [--api-type DELTA_GRPC|GRPC]
                     [--sds-dir DIR] [--xds-server-name NAME] [--plaintext]
       xds sds [--sds-dir DIR] [--cert FILE] [--key FILE] [--ca FILE] [--out DIR]
       xds chassis [flags]   (ML2/OVN: replaces neutron-ovn-metadata-agent on a chassis; see xds chassis --help)

xds is metaproxy's xDS control plane. For every Envoy node it serves (ADS over gRPC, state of the
world or delta, as the Envoy asks) one listener on 169.254.169.254:80 per Neutron network, bound in
the network's qdhcp-<id> namespace (qrouter-<id> for routers with --routers), plus one on
[fe80::a9fe:a9fe]:80 when the interface holding that address is known; each listener calls
cmd/extproc (--extproc-address) and routes to nova's metadata API (cluster nova_metadata).

Node ids: an Envoy is identified by the node.id of its bootstrap ("xds bootstrap --node-id", the host
name by default). xds maps networks to node ids as follows:
  --source neutron --neutron-mode agents  node id = the host of the Neutron DHCP agent hosting the
                                          network (L3 agent for routers): run one Envoy per agent host
                                          with node.id = that host name (neutron's "host" option).
  --source neutron --neutron-mode all     every network with a DHCP-enabled subnet, on --node-id; when
                                          --netns-dir exists on this host, a network is served once
                                          its qdhcp namespace exists here (and gets its IPv6 listener).
  --source netns                          the qdhcp-/qrouter- namespaces under --netns-dir of this
                                          host, on --node-id, and ML2/OVN's ovnmeta- ones (see
                                          xds chassis --help).
  --source file                           the node ids are the keys of --networks-file.
An Envoy whose node id has no networks gets the clusters only; one whose node id the source does
not know, or that connects before the first successful poll, gets nothing and keeps what it runs.
Networks added or removed reach the Envoys within --poll-interval; if the source fails, the last
good configuration stays. A listener an Envoy rejects is pushed again after 1 s, 2 s, ... 30 s.
Envoys older than 1.36.0 are refused.

Security: only an authenticated Envoy gets configuration. With --tls-cert, --tls-key and
--tls-client-ca xds serves mutual TLS, and --node-binding ties the node id a client may ask for to
its certificate (dns: a DNS SAN equal to the node id), so a node can neither read another node's
configuration nor invent node ids; refusals are logged and counted
(metaproxy_xds_connections_refused_total). Without TLS, xds listens only on a UNIX socket or
loopback (or anywhere with --insecure-plaintext, for labs). "xds bootstrap" writes the Envoy side:
its client certificate and the CA come from the SDS files "xds sds" writes, which Envoy re-reads
when they change. A TCP --extproc-address gets the same TLS from Envoy to cmd/extproc.

Settings: nova's address and TLS, [metadata_rate_limiting] and [metadata_haproxy] timeouts are read
from neutron's metadata_agent.ini (--metadata-agent-ini, neutron's defaults without it); --nova-*
flags override it. Neutron is reached with --os-cloud (clouds.yaml), OS_CLOUD or the OS_* variables,
or --neutron-url for a noauth Neutron. See docs/xds.md.

Flags:
`

// Main runs cmd/xds with args (without the program name) until ctx is done.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "bootstrap" {
		return bootstrapMain(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "sds" {
		return sdsMain(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "chassis" {
		return chassiscmd.Main(ctx, args[1:], stdout, stderr)
	}
	var cfg Config
	fs := newFlagSet(&cfg)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
	}
	if helped, err := cmdflags.Parse(fs, args, stdout); helped || err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(stdout, "xds", version.String())
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (the subcommands are bootstrap, sds and chassis)", fs.Args())
	}
	recordSet(fs, &cfg)
	verr := cfg.Validate()
	log, err := telemetry.NewLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		log = slog.New(slog.NewTextHandler(stderr, nil)) // Validate says what is wrong with the level or format
	}
	tlsSrv, terr := cfg.prepareTLS(log)
	if err := errors.Join(verr, terr); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	settings, err := cfg.Settings()
	if err != nil {
		return fmt.Errorf("invalid settings:\n%w", err)
	}
	return run(ctx, cfg, settings, tlsSrv, log)
}

// parseSubcommand parses the flags of subcommand name (usage text head, then the flags): done
// is true after --help, and arguments left over are an error.
func parseSubcommand(fs *flag.FlagSet, name, head string, args []string, stdout io.Writer) (done bool, err error) {
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), head+"\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if helped, err := cmdflags.Parse(fs, args, stdout); helped || err != nil {
		return helped, err
	}
	if fs.NArg() > 0 {
		return false, fmt.Errorf("%s: unexpected arguments %q", name, fs.Args())
	}
	return false, nil
}

// newSource builds the configured network source. Neutron's is asked (and Keystone for a token)
// at the first poll, not here: cmd/xds starts while they are down or refuse the credentials.
// With tracing on, every Neutron request is a client span, child of the poll's source read.
func newSource(cfg Config, log *slog.Logger, tel *telemetry.Telemetry) (source.Source, error) {
	switch cfg.SourceKind() {
	case "file":
		return source.NewFile(cfg.NetworksFile, cfg.NetnsDir), nil
	case "netns":
		return source.NewNamespaces(cfg.NetnsDir, cfg.NodeID, cfg.Routers, log.With("source", "netns"))
	default:
		o := osclient.Options{Cloud: cfg.OSCloud, NeutronURL: cfg.NeutronURL, Timeout: 30 * time.Second, UserAgent: "metaproxy-xds/" + version.String()}
		if tel.Tracing {
			o.WrapTransport = func(base http.RoundTripper) http.RoundTripper {
				return telemetry.HTTPTransport(base, tel.TracerProvider, tel.Propagator, "neutron")
			}
		}
		network, err := osclient.New(o)
		if err != nil {
			return nil, fmt.Errorf("neutron client: %w", err)
		}
		// In mode all, xds normally runs on the one node that serves everything: when the namespace
		// directory is here, follow it (serve a network once its qdhcp namespace exists).
		fi, statErr := os.Stat(cfg.NetnsDir)
		local := source.NeutronMode(cfg.NeutronMode) == source.ModeAll && statErr == nil && fi.IsDir()
		return &neutronSource{network: network, log: log, opts: source.NeutronOptions{
			Mode: source.NeutronMode(cfg.NeutronMode), NodeID: cfg.NodeID,
			Networks: true, Routers: cfg.Routers, NetnsDir: cfg.NetnsDir, LocalNamespaces: local,
			MeterProvider: tel.MeterProvider, Log: log.With("source", "neutron"),
		}}, nil
	}
}

func run(ctx context.Context, cfg Config, settings translate.Settings, tlsSrv *tlsfiles.Server, log *slog.Logger) error {
	shared, err := translate.NewShared(settings)
	if err != nil {
		return err
	}
	tel, err := telemetry.New(ctx, telemetry.Options{ServiceName: ServiceName, Version: version.String()})
	if err != nil {
		return err
	}
	defer tel.Close(ctx, log) // flush the last spans
	src, err := newSource(cfg, log, tel)
	if err != nil {
		return err
	}
	why := func() string { return "" }
	if ns, ok := src.(*neutronSource); ok {
		if err := ns.instrument(tel.MeterProvider); err != nil {
			return fmt.Errorf("xds metrics: %w", err)
		}
		why = ns.why
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	snaps := serve.NewSnapshots(log)
	cb := serve.NewCallbacks(log, snaps)
	poller := &serve.Poller{Source: src, Shared: shared, Snapshots: snaps, Interval: cfg.PollInterval, Log: log}
	if tel.Tracing {
		poller.Tracer = tel.TracerProvider.Tracer(serve.InstrumentationName)
	}
	if err := serve.Instrument(tel.MeterProvider, cb, snaps, poller); err != nil {
		return fmt.Errorf("xds metrics: %w", err)
	}

	grpcOpts, err := serverSecurity(cfg, tlsSrv, tel, log)
	if err != nil {
		return err
	}
	lis, err := listen.Open(cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen for xds: %w", err)
	}
	if tlsSrv == nil && !cfg.InsecurePlaintext {
		if err := plaintextOnLoopback(lis); err != nil {
			lis.Close()
			return err
		}
	}
	// Both listeners are bound before anything runs: an admin address in use is an error at start,
	// before any Envoy was served, and /readyz answers as soon as an Envoy can have a configuration.
	var adminLis net.Listener
	if cfg.AdminListen != "" {
		if adminLis, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			lis.Close()
			return fmt.Errorf("listen for admin: %w", err)
		}
	}
	log.Info("starting xds", "source", cfg.SourceKind(), "poll_interval", cfg.PollInterval,
		"nova", settings.Nova.Hosts, "nova_protocol", settings.Nova.Protocol, "extproc", settings.ExtProc.Address,
		"rate_limit", settings.RateLimit.Enabled, "tracing", tracingState(tel))

	errc := make(chan error, 3)
	running := 0
	start := func(f func() error) { running++; go func() { errc <- f() }() }
	start(func() error { return poller.Run(ctx) })
	start(func() error { return serve.Serve(ctx, serve.NewGRPCServer(ctx, snaps, cb, grpcOpts...), lis, log) })
	if adminLis != nil {
		admin := &http.Server{Addr: cfg.AdminListen, Handler: adminMux(poller, why, tel.MetricsHandler()), ReadHeaderTimeout: 5 * time.Second}
		start(func() error {
			go func() { <-ctx.Done(); admin.Close() }()
			if err := admin.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin server: %w", err)
			}
			return nil
		})
	}
	var first error
	for ; running > 0; running-- {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		} else if first == nil {
			cancel() // one part ended: stop the others
		}
	}
	log.Info("xds stopped")
	return first
}

// ServiceName is service.name of cmd/xds's traces (OTEL_SERVICE_NAME overrides it).
const ServiceName = "metaproxy-xds"

// MetricNames lists every metric family cmd/xds exports on /metrics besides the Go runtime's
// (go_*) and the process's (process_*); the Neutron source's (and MetricNeutronFailures) exist
// with --source neutron only.
func MetricNames() []string {
	return append(append(serve.MetricNames(), MetricConnectionsRefused, MetricNeutronFailures), source.NeutronMetricNames()...)
}

// MetricConnectionsRefused counts refused xDS clients: reason tls (a handshake without a valid
// client certificate) or node_id (a request for a node id its certificate does not name).
const MetricConnectionsRefused = "metaproxy_xds_connections_refused_total"

// handshakeTimeout bounds a TLS handshake (gRPC's own default is 120 s).
const handshakeTimeout = 10 * time.Second

// serverSecurity returns the gRPC server options that protect the xDS listener: mutual TLS with
// the node binding, or, without TLS, nothing (Validate allowed plain text: UNIX socket, loopback or
// --insecure-plaintext, which is warned about).
func serverSecurity(cfg Config, tlsSrv *tlsfiles.Server, tel *telemetry.Telemetry, log *slog.Logger) ([]grpc.ServerOption, error) {
	refusals, err := listen.NewRefusals(log, tel.MeterProvider.Meter("github.com/metaproxy/metaproxy/pkg/xdscmd"), "metaproxy.xds.connections.refused")
	if err != nil {
		return nil, fmt.Errorf("refusal metrics: %w", err)
	}
	if tlsSrv == nil {
		if cfg.InsecurePlaintext {
			log.Warn("xDS in plain text (--insecure-plaintext): anyone who reaches the address gets any node's configuration; labs only", "listen", cfg.Listen)
		} else {
			log.Info("xDS in plain text on a UNIX socket or loopback: every local process that can connect gets any node's configuration", "listen", cfg.Listen)
		}
		return nil, nil
	}
	binding, err := serve.ParseNodeBinding(cfg.NodeBinding)
	if err != nil {
		return nil, err
	}
	opts := []grpc.ServerOption{grpc.Creds(tlsSrv.Credentials(refusals.RefuseHandshake)), grpc.ConnectionTimeout(handshakeTimeout)}
	if binding.Binds() {
		opts = append(opts, serve.NewNodeAuthorizer(binding, refusals).ServerOptions()...)
	} else {
		log.Warn("--node-binding none: any client certificate of --tls-client-ca may ask for any node's configuration")
	}
	log.Info("xDS over mutual TLS", "client_ca", cfg.TLS.ClientCA, "node_binding", binding.String())
	return opts, nil
}

// plaintextOnLoopback checks the address a plain-text xDS listener is bound to: Validate allows
// "localhost" by its name, which /etc/hosts or DNS may resolve to an address other hosts reach.
func plaintextOnLoopback(lis net.Listener) error {
	a, ok := lis.Addr().(*net.TCPAddr)
	if !ok || a.IP.IsLoopback() {
		return nil // a UNIX socket, or loopback
	}
	return fmt.Errorf("the xDS listener is bound to %s, not a loopback address, and xDS in plain text is served only on loopback or a UNIX socket: give --tls-cert, --tls-key and --tls-client-ca, listen on 127.0.0.1 or unix:///PATH, or add --insecure-plaintext in a lab", a)
}

func tracingState(tel *telemetry.Telemetry) string {
	if !tel.Tracing {
		return "off (no OTEL_EXPORTER_OTLP_ENDPOINT)"
	}
	return "otlp " + tel.Endpoint
}

// adminMux serves /healthz (process up), /readyz (snapshots reflect a successful poll; if not,
// why: the source's last error) and /metrics (metrics, from the service's own registry).
func adminMux(p *serve.Poller, why func() string, metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			msg := "no successful poll of the network source yet"
			if reason := why(); reason != "" {
				msg += ": " + reason
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}
