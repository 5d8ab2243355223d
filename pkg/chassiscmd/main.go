// Package chassiscmd is `xds chassis`: the mode of cmd/xds that replaces neutron-ovn-metadata-agent
// on an ML2/OVN compute chassis. It keeps an ovnmeta-<network> namespace, plumbed into br-int as the
// network's metadata localport, for every network with a VM port bound to the chassis (package
// ovnchassis), and reports as the chassis's OVN Metadata agent in the Southbound database. It
// starts no proxy: cmd/xds (--source netns on the chassis, or --neutron-mode ovn centrally) gives
// the chassis's Envoy a listener in each namespace, and cmd/extproc signs the requests.
package chassiscmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/metaproxy/metaproxy/pkg/cmdflags"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/ovnchassis"
	"github.com/metaproxy/metaproxy/pkg/ovnmeta"
	"github.com/metaproxy/metaproxy/pkg/ovnports"
	"github.com/metaproxy/metaproxy/pkg/ovsctl"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/version"
)

// ServiceName is service.name of the chassis component's telemetry.
const ServiceName = "metaproxy-chassis"

const usageHead = `Usage: xds chassis [flags]

xds chassis replaces neutron-ovn-metadata-agent on an ML2/OVN chassis (compute node). Every
--interval it asks Neutron which networks have VM ports bound to this chassis (binding:host_id =
--host) and their metadata ports (device_owner network:distributed), and keeps, for each such
network, the namespace ovnmeta-<network id> exactly as the agent makes it: a veth pair
tap<id[:10]>0/tap<id[:10]>1, the inner end with the metadata port's MAC, its IPv4 addresses and
169.254.169.254/32, the outer end on the integration bridge with external_ids:iface-id = the
metadata port, and the checksum-fill rule on a netdev datapath. A namespace goes when the last VM
port of its network leaves the chassis. At start it adopts the namespaces that are right (the
agent's too) and removes the stale ones; it never touches a namespace not named ovnmeta-<UUID>,
and it leaves every namespace in place when it stops (the listeners in them keep working). When
Neutron does not answer, nothing changes.

It runs no proxy: run Envoy, cmd/extproc, and cmd/xds with --source netns (which serves every
ovnmeta- namespace of the host) beside it. With --report (the default) it registers as the
chassis's "OVN Metadata agent" in the Southbound Chassis_Private record and answers neutron-server's
liveness checks (nb_cfg), as the agent does, so that "openstack network agent list" stays true.

Needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN (namespaces, veths, iptables), ovs-vsctl,
ovn-sbctl and iptables. Neutron is reached with --os-cloud (clouds.yaml), OS_CLOUD or the OS_*
variables, or --neutron-url for a noauth Neutron. See docs/ovn.md.

Flags:
`

// Main runs `xds chassis` with args (after "chassis") until ctx is done.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
		fmt.Fprintln(stdout, "xds chassis", version.String())
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("chassis: unexpected arguments %q", fs.Args())
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := cfg.applyINI(); err != nil {
		return err
	}
	log, err := telemetry.NewLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return err
	}
	return run(ctx, cfg, log)
}

// parts are the pieces run wires together.
type parts struct {
	identity   ovnchassis.Identity
	reconciler *ovnchassis.Reconciler
	reporter   *ovnchassis.Reporter
}

func build(ctx context.Context, cfg Config, log *slog.Logger, wrap func(http.RoundTripper) http.RoundTripper) (parts, error) {
	ovs := ovsctl.NewOVS(ovsctl.OVSOptions{DB: cfg.OVSDB})
	id, err := ovnchassis.ReadIdentity(ctx, ovs, ovnchassis.Identity{Chassis: cfg.Chassis, Host: cfg.Host, Bridge: cfg.Bridge, SBRemote: cfg.SB.Connection})
	if err != nil {
		return parts{}, err
	}
	if strings.Contains(id.SBRemote, "ssl:") && (cfg.SB.PrivateKey == "" || cfg.SB.Certificate == "" || cfg.SB.CACert == "") {
		return parts{}, fmt.Errorf("the Southbound database %s is reached over TLS: give --ovn-sb-private-key, --ovn-sb-certificate and --ovn-sb-ca-cert "+
			"(ovn-controller's own files, or the [ovn] ovn_sb_* of neutron_ovn_metadata_agent.ini)", id.SBRemote)
	}
	client, err := osclient.NewNetworkClient(ctx, osclient.Options{Cloud: cfg.OSCloud, NeutronURL: cfg.NeutronURL, Timeout: cfg.NeutronTimeout, WrapTransport: wrap})
	if err != nil {
		return parts{}, fmt.Errorf("neutron client: %w", err)
	}
	prov, err := ovnmeta.NewProvisioner(ovnmeta.Options{NetnsDir: cfg.NetnsDir, Bridge: id.Bridge, Switch: ovs, Iptables: cfg.Iptables, Log: log})
	if err != nil {
		return parts{}, err
	}
	p := parts{identity: id, reconciler: &ovnchassis.Reconciler{
		Host: id.Host, Neutron: ovnports.New(client), Namespaces: prov, Switch: ovs,
		Interval: cfg.Interval, Timeout: cfg.NeutronTimeout, Log: log,
	}}
	if cfg.Report {
		sb := ovsctl.NewSB(ovsctl.SBOptions{DB: id.SBRemote, PrivateKey: cfg.SB.PrivateKey, Certificate: cfg.SB.Certificate, CACert: cfg.SB.CACert})
		p.reporter = &ovnchassis.Reporter{Chassis: id.Chassis, SB: sb, Description: description(version.String()), Interval: cfg.ReportInterval, Log: log}
	}
	return p, nil
}

func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	tel, err := telemetry.New(ctx, telemetry.Options{ServiceName: ServiceName, Version: version.String()})
	if err != nil {
		return err
	}
	defer tel.Close(ctx, log)
	var wrap func(http.RoundTripper) http.RoundTripper
	if tel.Tracing {
		wrap = func(base http.RoundTripper) http.RoundTripper {
			return telemetry.HTTPTransport(base, tel.TracerProvider, tel.Propagator, "neutron")
		}
	}
	p, err := build(ctx, cfg, log, wrap)
	if err != nil {
		return err
	}
	if err := ovnchassis.Instrument(tel.MeterProvider, p.reconciler, p.reporter); err != nil {
		return fmt.Errorf("chassis metrics: %w", err)
	}
	log.Info("starting xds chassis", "chassis", p.identity.Chassis, "host", p.identity.Host, "bridge", p.identity.Bridge,
		"southbound", p.identity.SBRemote, "netns_dir", cfg.NetnsDir, "interval", cfg.Interval, "report", cfg.Report)

	var lis net.Listener
	if cfg.AdminListen != "" {
		if lis, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return fmt.Errorf("listen for admin: %w", err)
		}
	}
	// Each part runs until ctx is done; the first to fail stops the others.
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.reconciler.Run(ctx) })
	if p.reporter != nil {
		g.Go(func() error { return p.reporter.Run(ctx) })
	}
	if lis != nil {
		admin := &http.Server{Handler: adminMux(p.reconciler, tel.MetricsHandler()), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			go func() { <-ctx.Done(); admin.Close() }()
			if err := admin.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin server: %w", err)
			}
			return nil
		})
	}
	err = g.Wait()
	log.Info("xds chassis stopped; the namespaces stay in place")
	return err
}

// adminMux serves /healthz, /readyz (a reconcile pass succeeded) and /metrics.
func adminMux(r *ovnchassis.Reconciler, metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Ready() {
			http.Error(w, "no successful reconcile pass yet (see the log: Neutron, Open vSwitch, namespaces)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// MetricNames lists every metric family `xds chassis` exports besides go_* and process_*.
func MetricNames() []string { return ovnchassis.MetricNames() }
