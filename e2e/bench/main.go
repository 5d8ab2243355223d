//go:build e2e

// Command bench is metaproxy's side-by-side benchmark harness (run it through e2e/scripts/bench.sh,
// as root). On this machine it starts the real neutron-server and nova metadata API, the incumbent
// (RabbitMQ + neutron-metadata-agent with its port cache on + haproxy in a qdhcp namespace with
// neutron's template) and metaproxy (cmd/xds + cmd/extproc + the e2e stand-in data plane, or Envoy
// when ENVOY_BIN is set), creates VM namespaces, and measures both chains with the same load:
// (a) with the real nova (and nova called directly, the ceiling of any chain), (b) with a trivial
// fast upstream in place of nova (the proxies' own overhead), a boot storm, the ext_proc decision
// path against the floor server, the RSS of cmd/extproc (100k cached ports) and cmd/xds (10k
// networks), and an ML2/OVN chassis (e2e/internal/ovnlab) with the real neutron-ovn-metadata-agent
// and then metaproxy on the same namespace. It prints one Markdown report.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options is the command line.
type options struct {
	binDir      string
	envoyBin    string
	duration    time.Duration
	concurrency int
	stormVMs    int
	extprocDur  time.Duration
	rates       []int // open-loop ext_proc rates, streams/s
	out         string
	keep        bool
	skipOVN     bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.binDir, "bin", "", "directory holding the built extproc, xds, standin and loadgen binaries")
	fs.StringVar(&o.envoyBin, "envoy-bin", os.Getenv("ENVOY_BIN"), "Envoy binary for the data plane (default $ENVOY_BIN; empty: the e2e stand-in)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each HTTP load run")
	fs.IntVar(&o.concurrency, "concurrency", 10, "keep-alive connections of each HTTP load run (wrk -c)")
	fs.IntVar(&o.stormVMs, "storm-vms", 20, "VMs per chain in the boot storm")
	fs.DurationVar(&o.extprocDur, "extproc-duration", 5*time.Second, "length of each ext_proc load run")
	rates := fs.String("extproc-rates", envOr("BENCH_RATES", "1000,4000"), "comma-separated open-loop ext_proc rates in streams/s (default $BENCH_RATES or 1000,4000)")
	fs.StringVar(&o.out, "out", "", "also write the report to this file")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (logs) after the run")
	fs.BoolVar(&o.skipOVN, "skip-ovn", os.Getenv("BENCH_SKIP_OVN") == "1", "skip the ML2/OVN section (default: $BENCH_SKIP_OVN=1 skips it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.rates, err = parseRates(*rates); err != nil {
		return err
	}
	if o.binDir == "" {
		return errors.New("--bin is required (e2e/scripts/bench.sh builds the binaries)")
	}
	for _, b := range []string{"extproc", "xds", "standin", "loadgen"} {
		if _, err := os.Stat(filepath.Join(o.binDir, b)); err != nil {
			return fmt.Errorf("--bin: %w", err)
		}
	}
	if o.duration <= 0 || o.duration > 2*time.Minute || o.concurrency <= 0 || o.concurrency > 256 ||
		o.stormVMs <= 0 || o.stormVMs > 200 || o.extprocDur <= 0 || o.extprocDur > time.Minute {
		return errors.New("bounds: 0 < duration <= 2m, 0 < concurrency <= 256, 0 < storm-vms <= 200, 0 < extproc-duration <= 1m")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	work, err := os.MkdirTemp("", "metaproxy-bench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	log.Info("work directory", "dir", work)

	r := &report{started: time.Now()}
	b := &bench{o: o, log: log, work: work, rep: r}
	defer b.close()
	if err := b.runAll(ctx); err != nil {
		return err
	}
	text := r.markdown()
	fmt.Fprint(stdout, text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parseRates reads "1000,4000": each rate is an open-loop run of --extproc-duration.
func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 || n > 100000 {
			return nil, fmt.Errorf("--extproc-rates: %q is not a rate in 1..100000 streams/s", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 || len(out) > 4 {
		return nil, errors.New("--extproc-rates: give 1 to 4 rates")
	}
	return out, nil
}
