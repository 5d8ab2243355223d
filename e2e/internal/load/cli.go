package load

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/metaproxy/metaproxy/pkg/listen"
)

const usage = `loadgen: metaproxy's benchmark load tool (loopback and your own namespaces only).

Usage:
  loadgen extproc  --address unix:///x.sock --concurrency 1,4,32,64 --duration 5s
                   (--network ID --ip ADDR | --ports-file FILE [--targets N]) [--conns 1] [--json]
                   [--rate 1000,4000 [--max-in-flight 64]] [--cpuprofile FILE]
      gRPC ext_proc streams exactly as Envoy sends them; decisions/s and latency per concurrency
      (closed loop), or with --rate per offered rate (open loop, latency from the scheduled start).
      Latency is the decision: stream opened to HeadersResponse; the whole stream is shown apart.
  loadgen floor    --listen unix:///x.sock
      the minimal ext_proc server (fixed header mutation) extproc numbers are compared with.
  loadgen http     --url URL [--netns vm-a,vm-b] --concurrency 10 --duration 10s [--requests N]
                   [--header 'K: V']... [--json]
      keep-alive GETs from inside VM network namespaces (or the host), like wrk.
  loadgen bootstorm --netns vm-1,vm-2,... [--url http://169.254.169.254] [--paths p1,p2]
                   [--count-url URL --count-metric NAME] [--json]
      every VM fetches cloud-init's paths at the same instant; counts Neutron port lookups.
  loadgen upstream --listen 127.0.0.1:PORT       trivial fast upstream in place of nova
  loadgen neutron-counter --listen ADDR --upstream URL
      reverse proxy in front of Neutron counting port lookups (` + CounterPath + `)
  loadgen xds      --nodes 1000 --networks 100 [--mode sotw|delta] [--agents-per-network 1] [--ipv6]
                   [--xds-bin bin/xds] [--xds-arg ARG]... [--poll-interval 1s] [--timeout 1m]
                   [--connect-after-ready] [--node-extensions 400] [--tls-ca F [--tls-cert F --tls-key F]] [--json]
      starts cmd/xds on a generated networks file (loopback), connects one Envoy-like ADS client
      per node, measures time to full config per node, then adds one network to every node and
      measures the time from the poll that saw it; NACKs, resources sent, cmd/xds RSS and CPU.
  loadgen gen-ports --ports 100000 --networks 100 --out FILE
  loadgen gen-networks --networks 10000 --node NODE --out FILE
`

// Main runs loadgen with args (without the program name) until ctx is done.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		return nil
	}
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet("loadgen "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch cmd {
	case "extproc":
		return runExtProcCmd(ctx, fs, rest, stdout)
	case "floor":
		addr := fs.String("listen", "", "unix:///path.sock or HOST:PORT")
		if err := parse(fs, rest, "listen"); err != nil {
			return err
		}
		l, err := listen.Open(*addr)
		if err != nil {
			return err
		}
		fmt.Fprintln(stderr, "floor ext_proc server on", *addr)
		return ServeFloor(ctx, l)
	case "http":
		return runHTTPCmd(ctx, fs, rest, stdout)
	case "bootstorm":
		return runBootStormCmd(ctx, fs, rest, stdout)
	case "upstream":
		addr := fs.String("listen", "127.0.0.1:0", "HOST:PORT")
		if err := parse(fs, rest); err != nil {
			return err
		}
		l, err := listen.Open(*addr)
		if err != nil {
			return err
		}
		fmt.Fprintln(stderr, "trivial upstream on", l.Addr())
		return ServeHTTPOn(ctx, l, &Upstream{})
	case "neutron-counter":
		addr := fs.String("listen", "127.0.0.1:0", "HOST:PORT")
		upstream := fs.String("upstream", "", "Neutron URL, like http://127.0.0.1:9696/")
		if err := parse(fs, rest, "upstream"); err != nil {
			return err
		}
		nc, err := NewNeutronCounter(*upstream)
		if err != nil {
			return err
		}
		l, err := listen.Open(*addr)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "neutron counter on %s -> %s (count at %s)\n", l.Addr(), *upstream, CounterPath)
		return ServeHTTPOn(ctx, l, nc)
	case "xds":
		return runXDSCmd(ctx, fs, rest, stdout, stderr)
	case "gen-ports":
		n := fs.Int("ports", 100000, "VM ports")
		nets := fs.Int("networks", 100, "networks they are spread over")
		out := fs.String("out", "", "output file")
		if err := parse(fs, rest, "out"); err != nil {
			return err
		}
		return writeFile(*out, func(w io.Writer) error { _, err := WritePorts(w, *n, *nets); return err })
	case "gen-networks":
		n := fs.Int("networks", 10000, "networks")
		node := fs.String("node", "bench-node", "cmd/xds node id")
		out := fs.String("out", "", "output file")
		if err := parse(fs, rest, "out"); err != nil {
			return err
		}
		return writeFile(*out, func(w io.Writer) error { return WriteNetworks(w, *node, *n) })
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown mode %q", cmd)
	}
}

// parse parses args and checks that the required flags are not empty.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	var errs []error
	for _, name := range required {
		if f := fs.Lookup(name); f != nil && f.Value.String() == "" {
			errs = append(errs, fmt.Errorf("--%s is required", name))
		}
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %v", fs.Args()))
	}
	return errors.Join(errs...)
}

func writeFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func emit(w io.Writer, asJSON bool, r Result) error {
	if asJSON {
		return r.WriteJSON(w)
	}
	r.Print(w)
	return nil
}

func runExtProcCmd(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var o ExtProcOptions
	fs.StringVar(&o.Address, "address", "", "ext_proc server: unix:///path.sock or HOST:PORT")
	fs.IntVar(&o.Conns, "conns", 1, "HTTP/2 connections (Envoy: one per worker thread)")
	conc := fs.String("concurrency", "1,4,32,64", "comma-separated streams in flight; one closed-loop run each")
	rates := fs.String("rate", "", "comma-separated streams/s; one open-loop run each instead of --concurrency")
	inflight := fs.Int("max-in-flight", 64, "open loop: most streams in flight (a request finding none free waits, and counts it)")
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "length of each run (0: bounded by --requests)")
	fs.IntVar(&o.Requests, "requests", 0, "requests per run (0: bounded by --duration)")
	network := fs.String("network", "", "network id (x-metaproxy-network-id)")
	router := fs.String("router", "", "router id (x-metaproxy-router-id) instead of --network")
	ip := fs.String("ip", "10.0.0.5", "VM address (source.address)")
	portsFile := fs.String("ports-file", "", "take the targets from the VM ports of this ports document")
	limit := fs.Int("targets", 0, "use only the first N targets of --ports-file (0: all)")
	fs.StringVar(&o.Name, "name", "", "label of the result")
	asJSON := fs.Bool("json", false, "one JSON line per run")
	cpuProfile := fs.String("cpuprofile", "", "write the client's own CPU profile (pprof) over all runs to this file")
	if err := parse(fs, args, "address"); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	switch {
	case *portsFile != "":
		f, err := os.Open(*portsFile)
		if err != nil {
			return err
		}
		o.Targets, err = ReadTargets(f)
		f.Close()
		if err != nil {
			return err
		}
		if *limit > 0 && *limit < len(o.Targets) {
			o.Targets = o.Targets[:*limit]
		}
	case *network != "" || *router != "":
		a, err := parseAddr(*ip)
		if err != nil {
			return err
		}
		t := Target{ScopeID: *network, Addr: a}
		if *router != "" {
			t = Target{Router: true, ScopeID: *router, Addr: a}
		}
		o.Targets = []Target{t}
	default:
		return errors.New("give --network/--router and --ip, or --ports-file")
	}
	levels, err := intList("concurrency", *conc)
	if err != nil {
		return err
	}
	var rateList []int
	if *rates != "" {
		if rateList, err = intList("rate", *rates); err != nil {
			return err
		}
		if *inflight <= 0 {
			return errors.New("--max-in-flight must be positive")
		}
	}
	type point struct {
		conc int
		rate float64
	}
	var points []point
	for _, c := range levels {
		points = append(points, point{conc: c})
	}
	if len(rateList) > 0 {
		points = points[:0]
		for _, r := range rateList {
			points = append(points, point{conc: *inflight, rate: float64(r)})
		}
	}
	for _, p := range points {
		o.Concurrency, o.Rate = p.conc, p.rate
		r, err := RunExtProc(ctx, o)
		if err != nil {
			return err
		}
		if err := emit(stdout, *asJSON, r); err != nil {
			return err
		}
	}
	return nil
}

func runHTTPCmd(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var o HTTPOptions
	fs.StringVar(&o.URL, "url", "http://169.254.169.254/openstack/latest/meta_data.json", "URL to GET")
	netns := fs.String("netns", "", "comma-separated VM namespaces (empty: this namespace)")
	fs.IntVar(&o.Concurrency, "concurrency", 10, "keep-alive connections, one request in flight each")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "length of the run (0: bounded by --requests)")
	fs.IntVar(&o.Requests, "requests", 0, "requests (0: bounded by --duration)")
	fs.StringVar(&o.Name, "name", "", "label of the result")
	var headers headerFlag
	fs.Var(&headers, "header", "`K: V` sent with every request (repeatable)")
	asJSON := fs.Bool("json", false, "one JSON line")
	if err := parse(fs, args); err != nil {
		return err
	}
	o.Namespaces = splitList(*netns)
	o.Header = http.Header(headers)
	r, err := RunHTTP(ctx, o)
	if err != nil {
		return err
	}
	return emit(stdout, *asJSON, r)
}

func runBootStormCmd(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var o BootStormOptions
	netns := fs.String("netns", "", "comma-separated VM namespaces, one per VM")
	fs.StringVar(&o.BaseURL, "url", "http://169.254.169.254", "metadata base URL")
	paths := fs.String("paths", "", "comma-separated paths (default: cloud-init's)")
	fs.StringVar(&o.CountURL, "count-url", "", "Prometheus text URL with the Neutron port lookup counter")
	fs.StringVar(&o.CountMetric, "count-metric", PortLookupMetric, "counter name at --count-url")
	fs.StringVar(&o.Name, "name", "", "label of the result")
	asJSON := fs.Bool("json", false, "one JSON line")
	if err := parse(fs, args, "netns"); err != nil {
		return err
	}
	o.Namespaces, o.Paths = splitList(*netns), splitList(*paths)
	r, err := RunBootStorm(ctx, o)
	if err != nil {
		return err
	}
	return emit(stdout, *asJSON, r)
}

type headerFlag http.Header

func (h *headerFlag) String() string { return fmt.Sprint(http.Header(*h)) }

func (h *headerFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("header %q: want 'Key: value'", s)
	}
	if *h == nil {
		*h = headerFlag{}
	}
	http.Header(*h).Add(strings.TrimSpace(k), strings.TrimSpace(v))
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// intList parses a comma-separated list of positive integers; what names it in errors.
func intList(what, s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s %q: want positive integers", what, p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s given", what)
	}
	return out, nil
}
