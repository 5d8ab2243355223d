package load

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// defaultXDSBin is cmd/xds next to this binary (how `make bench` builds them), else bin/xds
// (`make build`).
func defaultXDSBin() string {
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "xds"); p != exe {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	return filepath.Join("bin", "xds")
}

type repeated []string

func (r *repeated) String() string     { return fmt.Sprint(*r) }
func (r *repeated) Set(s string) error { *r = append(*r, s); return nil }

func runXDSCmd(ctx context.Context, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	o := XDSOptions{Fleet: Fleet{AgentsPerNetwork: 1}}
	fs.IntVar(&o.Nodes, "nodes", 100, "Envoy nodes (ADS clients, one gRPC connection each)")
	fs.IntVar(&o.Networks, "networks", 10, "networks per node before the change")
	fs.IntVar(&o.AgentsPerNetwork, "agents-per-network", 1, "nodes serving each network (neutron's dhcp_agents_per_network)")
	fs.BoolVar(&o.IPv6, "ipv6", false, "give every network an interface, hence an IPv6 listener too")
	mode := fs.String("mode", "sotw", "`sotw` (Envoy api_type GRPC) or delta (DELTA_GRPC)")
	fs.StringVar(&o.XDSBin, "xds-bin", defaultXDSBin(), "cmd/xds binary to start")
	var extra repeated
	fs.Var(&extra, "xds-arg", "extra cmd/xds argument, e.g. --xds-arg=--log-level=warn (repeatable)")
	fs.DurationVar(&o.PollInterval, "poll-interval", time.Second, "cmd/xds --poll-interval")
	fs.DurationVar(&o.Timeout, "timeout", time.Minute, "bound of each phase (all nodes full; the change everywhere)")
	fs.BoolVar(&o.ConnectAfterReady, "connect-after-ready", false, "connect once cmd/xds's first poll is done, not as soon as it listens")
	fs.IntVar(&o.NodeExtensions, "node-extensions", DefaultNodeExtensions, "entries of each node's extensions list, as Envoy lists what is compiled in (0: a bare node)")
	fs.StringVar(&o.Dir, "dir", "", "keep the networks file and cmd/xds's log here (default: a temporary directory)")
	fs.StringVar(&o.TLS.CA, "tls-ca", "", "PEM CA verifying cmd/xds's server certificate (enables TLS)")
	fs.StringVar(&o.TLS.Cert, "tls-cert", "", "PEM client certificate; "+NodePlaceholder+" is replaced by each node id")
	fs.StringVar(&o.TLS.Key, "tls-key", "", "PEM client key; "+NodePlaceholder+" is replaced by each node id")
	fs.StringVar(&o.TLS.ServerName, "tls-server-name", "", "name to verify in cmd/xds's certificate (default: 127.0.0.1)")
	fs.StringVar(&o.Name, "name", "", "label of the result")
	asJSON := fs.Bool("json", false, "one JSON line")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch *mode {
	case "sotw":
	case "delta":
		o.Delta = true
	default:
		return fmt.Errorf("--mode %q: want sotw or delta", *mode)
	}
	o.XDSArgs = extra
	if !*quiet {
		o.Log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	r, err := RunXDS(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		return r.WriteJSON(stdout)
	}
	r.Print(stdout)
	return nil
}
