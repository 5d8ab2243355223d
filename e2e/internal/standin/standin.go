// Package standin is a test-only stand-in for Envoy used by metaproxy's e2e suite when no Envoy
// binary is available (ENVOY_BIN unset). It is NOT Envoy: it implements only the subset of Envoy
// configuration that metaproxy's control plane produces, takes all of it over ADS, and rejects
// (NACKs) anything else. See README.md beside this file.
package standin

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/admin"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/bootstrap"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/cluster"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/dataplane"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/hcm"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
)

// Config is the stand-in's command line.
type Config struct {
	// Bootstrap is an Envoy bootstrap file (Envoy's -c / --config-path), with Envoy's
	// --service-node and --service-cluster overriding its node.
	Bootstrap                   string
	ServiceNode, ServiceCluster string
	// XDS, NodeID, NodeCluster, Delta and Admin are the shortcut for a plain-text bootstrap (the
	// benchmarks): ADS to XDS (HOST:PORT) without TLS.
	XDS         string
	NodeID      string
	NodeCluster string
	Delta       bool
	Admin       string
	LogLevel    string
	// AdminListener, when set, serves the admin interface instead of listening on the admin address.
	AdminListener net.Listener
}

// ParseFlags parses args into a Config, reporting every problem at once.
func ParseFlags(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "standin: test-only Envoy stand-in for metaproxy's e2e suite (NOT Envoy).")
		fmt.Fprintln(stderr, "Usage: standin -c BOOTSTRAP [--service-node ID] [--service-cluster NAME]")
		fmt.Fprintln(stderr, "       standin --xds HOST:PORT --node-id ID [--delta] [--admin HOST:PORT]   (plain-text ADS)")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Bootstrap, "c", "", "Envoy bootstrap `file` (as Envoy's -c): node, admin, ADS and its cluster (TLS included)")
	fs.StringVar(&c.Bootstrap, "config-path", "", "same as -c")
	fs.StringVar(&c.ServiceNode, "service-node", "", "override the bootstrap's node.id (as Envoy's --service-node)")
	fs.StringVar(&c.ServiceCluster, "service-cluster", "", "override the bootstrap's node.cluster (as Envoy's --service-cluster)")
	fs.StringVar(&c.XDS, "xds", "", "without a bootstrap: control plane ADS address (host:port, plaintext gRPC)")
	fs.StringVar(&c.NodeID, "node-id", "", "without a bootstrap: Envoy node id to present to the control plane")
	fs.StringVar(&c.NodeCluster, "node-cluster", "metaproxy", "without a bootstrap: Envoy node cluster to present")
	fs.BoolVar(&c.Delta, "delta", false, "without a bootstrap: use incremental xDS (DeltaAggregatedResources) instead of state of the world")
	fs.StringVar(&c.Admin, "admin", "", "without a bootstrap: admin listen address (host:port) serving /ready /listeners /stats /config_dump")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug|info|warn|error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var errs []error
	switch {
	case c.Bootstrap != "" && (c.XDS != "" || c.NodeID != "" || c.Delta || c.Admin != ""):
		errs = append(errs, errors.New("-c and --xds/--node-id/--delta/--admin are exclusive: the bootstrap says all of that"))
	case c.Bootstrap == "" && (c.XDS == "" || c.NodeID == ""):
		errs = append(errs, errors.New("give -c BOOTSTRAP, or --xds and --node-id"))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %v", fs.Args()))
	}
	return c, errors.Join(errs...)
}

// Main runs the stand-in until ctx is done.
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	c, err := ParseFlags(args, stderr)
	if err != nil {
		return err
	}
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	return Run(ctx, c, log)
}

// Run runs the stand-in with a parsed Config.
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	var b *bootstrap.Bootstrap
	var err error
	if c.Bootstrap != "" {
		b, err = bootstrap.Load(c.Bootstrap, bootstrap.Overrides{ServiceNode: c.ServiceNode, ServiceCluster: c.ServiceCluster})
	} else {
		b, err = bootstrap.Plaintext(c.XDS, c.NodeID, c.NodeCluster, c.Delta, c.Admin)
	}
	if err != nil {
		return err
	}
	dp := dataplane.New(log, hcm.NewStats())
	defer dp.Close()
	// The ADS cluster is a static cluster like any other: its gRPC connection (and TLS) is the
	// cluster package's, as Envoy's is its cluster manager's.
	xds := cluster.NewUpstream(b.XDS)
	defer xds.Close()
	conn, err := xds.GRPC()
	if err != nil {
		return fmt.Errorf("xds cluster %s: %w", b.XDS.Name, err)
	}
	client, err := xdsclient.New(xdsclient.Options{
		Conn: conn, NodeID: b.NodeID, NodeCluster: b.NodeCluster, Delta: b.Delta, NodeOnFirstMessageOnly: b.NodeOnFirstMessageOnly,
		Applier: dp, Log: log,
	})
	if err != nil {
		return err
	}
	ln := c.AdminListener
	if ln == nil && b.Admin != "" {
		if ln, err = net.Listen("tcp", b.Admin); err != nil {
			return fmt.Errorf("admin listen: %w", err)
		}
	}
	if ln != nil {
		srv := &http.Server{Handler: admin.Handler(dp), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("admin serving", "address", ln.Addr().String())
	}
	log.Info("stand-in starting (test-only, not Envoy)", "xds_cluster", b.XDS.Name, "xds", b.XDS.Endpoints, "tls", b.XDS.TLS != nil, "node", b.NodeID, "delta", b.Delta)
	return client.Run(ctx)
}
