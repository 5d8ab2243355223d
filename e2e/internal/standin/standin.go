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
	"github.com/metaproxy/metaproxy/e2e/internal/standin/dataplane"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/hcm"
	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
)

// Config is the stand-in's command line.
type Config struct {
	XDS         string
	NodeID      string
	NodeCluster string
	Delta       bool
	Admin       string
	LogLevel    string
	// AdminListener, when set, serves the admin interface instead of listening on Admin.
	AdminListener net.Listener
}

// ParseFlags parses args into a Config, reporting every problem at once.
func ParseFlags(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "standin: test-only Envoy stand-in for metaproxy's e2e suite (NOT Envoy).")
		fmt.Fprintln(stderr, "Usage: standin --xds HOST:PORT --node-id ID [--delta] [--admin HOST:PORT]")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.XDS, "xds", "", "control plane ADS address (host:port, plaintext gRPC)")
	fs.StringVar(&c.NodeID, "node-id", "", "Envoy node id to present to the control plane")
	fs.StringVar(&c.NodeCluster, "node-cluster", "metaproxy", "Envoy node cluster to present")
	fs.BoolVar(&c.Delta, "delta", false, "use incremental xDS (DeltaAggregatedResources) instead of state of the world")
	fs.StringVar(&c.Admin, "admin", "", "admin listen address (host:port) serving /ready /listeners /stats /config_dump")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug|info|warn|error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var errs []error
	if c.XDS == "" {
		errs = append(errs, errors.New("--xds is required"))
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("--node-id is required"))
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
	dp := dataplane.New(log, hcm.NewStats())
	defer dp.Close()
	client, err := xdsclient.New(xdsclient.Options{
		Address: c.XDS, NodeID: c.NodeID, NodeCluster: c.NodeCluster, Delta: c.Delta, Applier: dp, Log: log,
	})
	if err != nil {
		return err
	}
	ln := c.AdminListener
	if ln == nil && c.Admin != "" {
		if ln, err = net.Listen("tcp", c.Admin); err != nil {
			return fmt.Errorf("admin listen: %w", err)
		}
	}
	if ln != nil {
		srv := &http.Server{Handler: admin.Handler(dp), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("admin serving", "address", ln.Addr().String())
	}
	log.Info("stand-in starting (test-only, not Envoy)", "xds", c.XDS, "node", c.NodeID, "delta", c.Delta)
	return client.Run(ctx)
}
