package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// Bounds of a `loadgen xds` run.
const (
	maxXDSTimeout  = 10 * time.Minute
	maxXDSPoll     = time.Minute
	xdsStopGrace   = 5 * time.Second
	xdsStartBudget = 30 * time.Second
)

// XDSOptions configures RunXDS.
type XDSOptions struct {
	Fleet
	// Delta makes every client use the incremental protocol (DeltaAggregatedResources), as Envoy
	// with api_type DELTA_GRPC; else state of the world (GRPC).
	Delta bool
	// XDSBin is the cmd/xds binary to start; XDSArgs are added to its command line (TLS, log level),
	// except the flags the run sets itself (ownedXDSFlags).
	XDSBin  string
	XDSArgs []string
	// PollInterval is cmd/xds's --poll-interval (at least 1s, as cmd/xds requires).
	PollInterval time.Duration
	// Timeout bounds each phase: every node full, the change everywhere.
	Timeout time.Duration
	// ConnectAfterReady makes the clients connect once cmd/xds answers /readyz (its first poll is
	// done), instead of as soon as it listens (Envoys reconnecting to a restarted control plane).
	ConnectAfterReady bool
	// NodeExtensions is the length of every client's node extensions list (Envoy sends every
	// extension compiled into it there, in the first request of each stream with the bootstrap's
	// set_node_on_first_message_only, which the clients follow); see DefaultNodeExtensions.
	NodeExtensions int
	// Dir holds the networks file and cmd/xds's log; empty: a temporary directory removed after.
	Dir string
	// TLS is how the clients speak to cmd/xds (zero: plaintext).
	TLS ClientTLS
	// Name labels the result.
	Name string
	// Log receives progress lines; nil: none.
	Log *slog.Logger
}

// DefaultNodeExtensions is how many extensions the clients' nodes list unless told otherwise:
// about what a release build of Envoy registers (source/extensions/extensions_build_config.bzl
// has some 300, and the registry adds built-in factories and deprecated alias names), which makes
// a first request of ~40 KiB.
const DefaultNodeExtensions = 400

// maxNodeExtensions bounds NodeExtensions.
const maxNodeExtensions = 5000

// Validate reports every problem of o at once.
func (o XDSOptions) Validate() error {
	errs := []error{o.Fleet.Validate(), checkXDSArgs(o.XDSArgs), o.TLS.Validate()}
	if o.NodeExtensions < 0 || o.NodeExtensions > maxNodeExtensions {
		errs = append(errs, fmt.Errorf("node extensions %d: want 0 to %d", o.NodeExtensions, maxNodeExtensions))
	}
	if o.PollInterval < time.Second || o.PollInterval > maxXDSPoll {
		errs = append(errs, fmt.Errorf("poll interval %s: want 1s to %s", o.PollInterval, maxXDSPoll))
	}
	if o.Timeout <= 0 || o.Timeout > maxXDSTimeout {
		errs = append(errs, fmt.Errorf("timeout %s: want up to %s", o.Timeout, maxXDSTimeout))
	}
	if fi, err := os.Stat(o.XDSBin); err != nil || fi.IsDir() {
		errs = append(errs, fmt.Errorf("cmd/xds binary %q not found: `make build` puts it in bin/, or give --xds-bin", o.XDSBin))
	}
	return errors.Join(errs...)
}

// RunXDS starts cmd/xds (--source file, on loopback) on the fleet's networks file, connects one ADS
// client per node, each on its own gRPC connection as every Envoy holds one, subscribing and
// ACKing as Envoy does (the e2e stand-in's client: clusters, then listeners, then the routes the
// listeners name), and measures:
//
//   - per node, the time from its connect to its full configuration: every listener of its
//     networks, bound in the network's namespace, with both clusters and the route it names; and
//     whether the first listener set it got had fewer listeners than that;
//   - after adding one network to every node (the networks file is replaced atomically), when
//     cmd/xds's next poll opened the file (inotify), and per node the time from that poll to the
//     new listener; the resources every node received for the change (delta: only the new
//     listener should come);
//   - NACKs, rejected updates, broken streams, and cmd/xds's (and the client's own) RSS and CPU.
//
// A phase that does not complete within Timeout is reported (NotFull, NotChanged, Problems), not
// returned as an error; errors are for runs that could not be made.
func RunXDS(ctx context.Context, o XDSOptions) (XDSResult, error) {
	if err := o.Validate(); err != nil {
		return XDSResult{}, err
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	creds, err := o.TLS.clientCredentials()
	if err != nil {
		return XDSResult{}, err
	}
	dir := o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "loadgen-xds-"); err != nil {
			return XDSResult{}, err
		}
		defer os.RemoveAll(dir)
	}
	var before, after bytes.Buffer
	if err := errors.Join(o.WriteNetworksFile(&before, false), o.WriteNetworksFile(&after, true)); err != nil {
		return XDSResult{}, err
	}
	file := filepath.Join(dir, "networks.json")
	if err := os.WriteFile(file, before.Bytes(), 0o644); err != nil {
		return XDSResult{}, err
	}
	res := newXDSResult(o, before.Len())
	t0 := time.Now()
	if _, err := source.ParseNetworks(after.Bytes(), ""); err != nil {
		return res, fmt.Errorf("generated networks file: %w", err)
	}
	res.FileParse = time.Since(t0)

	x, err := startXDS(o.XDSBin, dir, file, o.PollInterval, o.XDSArgs)
	if err != nil {
		return res, err
	}
	defer x.stop(xdsStopGrace)
	if err := x.waitHTTP(ctx, "/healthz", xdsStartBudget); err != nil {
		return res, err
	}
	if res.Mem.Listening, err = sampleProc(x.pid()); err != nil {
		return res, err
	}
	log.Info("cmd/xds listening", "xds", x.addr, "admin", x.admin, "log", x.logPath)
	rctx, stopReady := context.WithCancel(ctx)
	defer stopReady()
	readyc := make(chan readyInfo, 1)
	go func() { readyc <- x.awaitReady(rctx, o.Timeout) }()
	var ready readyInfo
	gotReady := false
	if o.ConnectAfterReady {
		if ready, gotReady = <-readyc, true; ready.err != nil {
			return res, ready.err
		}
	}

	progress := newFleetProgress(o.Nodes)
	cpu := newCPUPhases(x.pid())
	connectStart := time.Now()
	recs, stopClients, err := connectFleet(ctx, o, x.addr, creds, progress)
	defer stopClients()
	if err != nil {
		return res, err
	}
	log.Info("clients connecting", "nodes", o.Nodes, "mode", res.Mode)
	allFull, err := waitPhase(ctx, x, progress, phaseFull, o.Timeout, log)
	if err != nil {
		return res, err
	}
	res.AllFull = since(connectStart, allFull)
	if res.Mem.Full, err = sampleProc(x.pid()); err != nil {
		return res, err
	}
	cpu.mark("connect")

	var writeAt, readAt time.Time
	if !allFull.IsZero() {
		if writeAt, readAt, err = changePhase(ctx, o, x, file, after.Bytes(), progress, log); err != nil {
			return res, err
		}
		if res.Mem.Changed, err = sampleProc(x.pid()); err != nil {
			return res, err
		}
		cpu.mark("change")
	}
	stopClients()
	if !gotReady {
		stopReady()
		ready = <-readyc
	}
	if ready.err != nil {
		log.Warn("cmd/xds did not answer /readyz", "error", ready.err)
	}
	res.XDSReady, res.Mem.Ready = ready.after, ready.mem
	end, err := sampleProc(x.pid())
	if err != nil {
		return res, err
	}
	res.Mem.Peak = end.HWM
	res.CPU = cpu.phases
	reports := make([]nodeReport, len(recs))
	for i, r := range recs {
		reports[i] = r.report()
	}
	res.summarize(reports, writeAt, readAt)
	return res, nil
}

// connectFleet starts one client per node of the fleet, each on its own gRPC connection to addr,
// until stop is called (also when it fails part way).
func connectFleet(ctx context.Context, o XDSOptions, addr string, creds func(string) (credentials.TransportCredentials, error),
	p *fleetProgress) (recs []*nodeRecorder, stop func(), err error) {
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = sync.OnceFunc(func() { cancel(); wg.Wait() })
	for i := range o.Nodes {
		id := o.NodeID(i)
		rec := newNodeRecorder(id, o.ExpectedListeners(i, false), o.ExpectedListeners(i, true), p)
		tc, err := creds(id)
		if err != nil {
			return nil, stop, err
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tc), grpc.WithStreamInterceptor(rec.intercept))
		if err != nil {
			return nil, stop, fmt.Errorf("xds client for %s: %w", addr, err)
		}
		c, err := xdsclient.New(xdsclient.Options{Conn: conn, NodeID: id, NodeCluster: "loadgen", Delta: o.Delta, Applier: rec,
			NodeOnFirstMessageOnly: true, NodeExtensions: o.NodeExtensions})
		if err != nil {
			conn.Close()
			return nil, stop, err
		}
		recs = append(recs, rec)
		rec.started = time.Now()
		wg.Add(1)
		go func() { defer wg.Done(); defer conn.Close(); _ = c.Run(cctx) }()
	}
	return recs, stop, nil
}

// changePhase writes the change, waits for cmd/xds's next poll to open it (readAt, zero when it
// did not within a poll interval and the timeout) and for every node to have it, then for one more
// poll, so that the rest of the change's responses (other types, other streams) are in.
func changePhase(ctx context.Context, o XDSOptions, x *xdsProcess, file string, content []byte, p *fleetProgress,
	log *slog.Logger) (writeAt, readAt time.Time, err error) {
	w, readAt, err := writeChange(file, content, p, o.PollInterval+o.Timeout)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	defer w.Close()
	writeAt = time.Unix(0, p.changeAt.Load())
	log.Info("change written", "read_by_cmd_xds_after", since(writeAt, readAt))
	if _, err := waitPhase(ctx, x, p, phaseChanged, o.Timeout, log); err != nil {
		return writeAt, readAt, err
	}
	for len(w.C) > 0 { // polls that ran while the change spread
		<-w.C
	}
	select {
	case <-w.C:
	case <-time.After(2*o.PollInterval + time.Second):
	}
	return writeAt, readAt, nil
}

// writeChange replaces file with content atomically (a rename) and returns when cmd/xds next
// opens it, with the watch (its channel reports the polls after that one).
func writeChange(file string, content []byte, p *fleetProgress, timeout time.Duration) (*fileOpens, time.Time, error) {
	next := file + ".new"
	if err := os.WriteFile(next, content, 0o644); err != nil {
		return nil, time.Time{}, err
	}
	w, err := watchOpens(next)
	if err != nil {
		return nil, time.Time{}, err
	}
	p.changeAt.Store(time.Now().UnixNano())
	if err := os.Rename(next, file); err != nil {
		w.Close()
		return nil, time.Time{}, err
	}
	select {
	case at := <-w.C:
		return w, at, nil
	case <-time.After(timeout):
		return w, time.Time{}, nil
	}
}

// waitPhase waits until every node reached phase, and returns when; the zero time when timeout
// passed first. It logs progress every few seconds.
func waitPhase(ctx context.Context, x *xdsProcess, p *fleetProgress, phase int, timeout time.Duration, log *slog.Logger) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.done[phase]:
			return time.Now(), nil
		case <-deadline.C:
			log.Warn("phase timed out", "phase", phaseNames[phase], "reached", p.reached[phase].Load(), "nodes", p.total)
			return time.Time{}, nil
		case <-x.done:
			return time.Time{}, fmt.Errorf("cmd/xds exited during the run (%v); its log ends:\n%s", x.err, x.tail())
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-tick.C:
			log.Info("waiting", "phase", phaseNames[phase], "reached", p.reached[phase].Load(), "nodes", p.total)
		}
	}
}

var phaseNames = [phases]string{"full config", "change"}

// since is end - start, or 0 when end is the zero time (never happened).
func since(start, end time.Time) time.Duration {
	if end.IsZero() {
		return 0
	}
	return end.Sub(start)
}

// cpuPhases records the CPU cmd/xds and this process used in each phase.
type cpuPhases struct {
	pid          int
	phases       []CPUPhase
	lastXDS, cli procSample
}

// CPUPhase is the CPU time (seconds) cmd/xds and the load client used during one phase of a run.
type CPUPhase struct {
	Phase  string  `json:"phase"`
	XDS    float64 `json:"xds_s"`
	Client float64 `json:"client_s"`
}

func newCPUPhases(pid int) *cpuPhases {
	c := &cpuPhases{pid: pid}
	c.lastXDS, _ = sampleProc(pid)
	c.cli, _ = sampleProc(0)
	return c
}

func (c *cpuPhases) mark(phase string) {
	x, errX := sampleProc(c.pid)
	self, errS := sampleProc(0)
	if errX != nil || errS != nil {
		return
	}
	c.phases = append(c.phases, CPUPhase{Phase: phase, XDS: x.CPU - c.lastXDS.CPU, Client: self.CPU - c.cli.CPU})
	c.lastXDS, c.cli = x, self
}

// quantiles returns the distribution of ds (unsorted; sorted in place).
func quantiles(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{}
	}
	slices.Sort(ds)
	return Dist{N: len(ds), P50: quantile(ds, .5), P90: quantile(ds, .9), P99: quantile(ds, .99), Max: ds[len(ds)-1]}
}
