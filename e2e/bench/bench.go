//go:build e2e

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/incumbent"
	"github.com/metaproxy/metaproxy/e2e/internal/load"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

const (
	secret   = "bench-shared-secret"
	nodeID   = "bench"
	metaPath = "/openstack/latest/meta_data.json"
	grace    = 10 * time.Second
)

// chain is one proxy chain's network with its VMs.
type chain struct {
	osNet  openstack.Network
	net    *vmnet.Network
	steady []openstack.VM // the VM the steady load comes from
	nsVM   []*vmnet.VM
	storm  []*vmnet.VM
}

// bench holds everything one run started.
type bench struct {
	o    options
	log  *slog.Logger
	work string
	rep  *report

	cloud    *openstack.Cloud
	fabric   *vmnet.Fabric
	inc, mp  chain
	counter  *load.NeutronCounter
	stopHTTP context.CancelFunc

	section string // "(a)" or "(b)": labels the CPU rows

	mu    sync.Mutex
	procs []*proc
}

func (b *bench) bin(name string) string { return filepath.Join(b.o.binDir, name) }
func (b *bench) path(rel string) string { return filepath.Join(b.work, rel) }

// start starts a process that close stops.
func (b *bench) start(name, ns string, env []string, argv ...string) (*proc, error) {
	p, err := start(name, b.path(name+".log"), ns, env, argv...)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

func (b *bench) close() {
	b.mu.Lock()
	procs := b.procs
	b.procs = nil
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(grace)
	}
	if b.stopHTTP != nil {
		b.stopHTTP()
	}
	if b.fabric != nil {
		if err := b.fabric.Close(); err != nil {
			b.log.Warn("remove namespaces", "err", err)
		}
	}
	if b.cloud != nil {
		if err := b.cloud.Close(); err != nil {
			b.log.Warn("stop OpenStack", "err", err)
		}
	}
}

func (b *bench) runAll(ctx context.Context) error {
	b.rep.machine = machine()
	b.rep.dataPlane = "e2e stand-in (e2e/cmd/standin; NOT Envoy)"
	if b.o.envoyBin != "" {
		out, _ := exec.Command(b.o.envoyBin, "--version").Output()
		b.rep.dataPlane = "Envoy: " + strings.TrimSpace(string(out))
	}
	b.rep.opts = b.o
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"ext_proc decisions and RSS with 100k ports", b.extprocSection},
		{"cmd/xds RSS with 10k networks", b.xdsSection},
		{"OpenStack, networks and VMs", b.setup},
		{"incumbent and metaproxy with the real nova", b.novaSection},
		{"boot storm", b.stormSection},
		{"incumbent and metaproxy with a trivial upstream", b.trivialSection},
		{"ML2/OVN: the incumbent agent and metaproxy on one chassis", b.ovnSection},
	}
	for _, s := range steps {
		if b.o.skipOVN && strings.HasPrefix(s.name, "ML2/OVN") {
			b.rep.ovnSkipped = "skipped (--skip-ovn)"
			continue
		}
		t0 := time.Now()
		b.log.Info("step", "name", s.name)
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.log.Info("step done", "name", s.name, "took", time.Since(t0).Round(100*time.Millisecond))
	}
	return nil
}

// extprocSection: a 100k-port ports file, cmd/extproc on it, every port looked up once (cache
// warm), RSS, then decisions/s of cmd/extproc and the floor at 1/4/32/64 streams (closed loop) and
// their latency at fixed rates (open loop).
func (b *bench) extprocSection(ctx context.Context) error {
	const nPorts, nNets = 100000, 100
	f, err := os.Create(b.path("ports-100k.json"))
	if err != nil {
		return err
	}
	targets, err := load.WritePorts(f, nPorts, nNets)
	f.Close()
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.path("secret"), []byte(secret+"\n"), 0o600); err != nil {
		return err
	}
	adminPort, err := freePort()
	if err != nil {
		return err
	}
	sock := b.path("extproc-100k.sock")
	ep, err := b.start("extproc-100k", "", nil, b.bin("extproc"), "--listen", "unix://"+sock,
		"--admin-listen", fmt.Sprintf("127.0.0.1:%d", adminPort), "--ports-file", b.path("ports-100k.json"),
		"--secret-file", b.path("secret"), "--cache-size", "200000", "--cache-ttl", "10m", "--log-level", "warn")
	if err != nil {
		return err
	}
	defer ep.stop(grace)
	floorSock := b.path("floor.sock")
	fl, err := b.start("floor", "", nil, b.bin("loadgen"), "floor", "--listen", "unix://"+floorSock)
	if err != nil {
		return err
	}
	defer fl.stop(grace)
	if err := waitHTTP(ctx, ep, fmt.Sprintf("http://127.0.0.1:%d/readyz", adminPort), 30*time.Second); err != nil {
		return err
	}
	if err := waitSocket(ctx, fl, floorSock, 10*time.Second); err != nil {
		return err
	}
	rss0, _, err := rssKiB(ep.pid())
	if err != nil {
		return err
	}
	warm, err := load.RunExtProc(ctx, load.ExtProcOptions{Address: "unix://" + sock, Concurrency: 32, Requests: nPorts,
		Targets: targets, Name: "warm-up: every one of 100k ports once"})
	if err != nil {
		return err
	}
	b.rep.warm = warm
	if warm.OK != nPorts {
		return fmt.Errorf("warm-up: %d of %d ports answered with a mutation (%s)", warm.OK, nPorts, warm.ErrorString())
	}
	time.Sleep(2 * time.Second) // let the GC settle what the warm-up left
	rss, hwm, err := rssKiB(ep.pid())
	if err != nil {
		return err
	}
	b.rep.extprocRSS = memRow{what: "cmd/extproc, 100k ports file, 100k answers cached", startKiB: rss0, rssKiB: rss, hwmKiB: hwm}
	if b.rep.extprocNeutronRSS, err = b.neutronModeRSS(ctx, targets); err != nil {
		return err
	}

	hot := targets[:1000]
	// One unmeasured second of each server first (the first streams of a connection pay for its
	// set-up), then decisionRounds rounds, floor and cmd/extproc alternating at each concurrency:
	// on two cores shared with this client, one run of a few seconds varies by ±10% at 1-4 streams,
	// so a single pair of runs can show a difference that is not in the servers.
	for _, addr := range []string{floorSock, sock} {
		if _, err := load.RunExtProc(ctx, load.ExtProcOptions{Address: "unix://" + addr, Concurrency: 4, Duration: time.Second, Targets: hot, Name: "warm-up"}); err != nil {
			return err
		}
	}
	concurrencies := []int{1, 4, 32, 64}
	rounds := make([][][2]load.Result, len(concurrencies))
	for range decisionRounds {
		for i, c := range concurrencies {
			fr, err := load.RunExtProc(ctx, load.ExtProcOptions{Address: "unix://" + floorSock, Concurrency: c, Duration: b.o.extprocDur, Targets: hot, Name: "floor"})
			if err != nil {
				return err
			}
			er, err := load.RunExtProc(ctx, load.ExtProcOptions{Address: "unix://" + sock, Concurrency: c, Duration: b.o.extprocDur, Targets: hot, Name: "cmd/extproc"})
			if err != nil {
				return err
			}
			rounds[i] = append(rounds[i], [2]load.Result{fr, er})
		}
	}
	for _, rs := range rounds {
		b.rep.decisions = append(b.rep.decisions, medianRound(rs))
		b.rep.decisionRounds = append(b.rep.decisionRounds, rs)
	}
	// Open loop: a loaded but not saturated service, latency from each stream's scheduled start.
	for _, rate := range b.o.rates {
		o := load.ExtProcOptions{Concurrency: openLoopInFlight, Rate: float64(rate), Duration: b.o.extprocDur, Targets: hot}
		o.Address, o.Name = "unix://"+floorSock, "floor"
		fr, err := load.RunExtProc(ctx, o)
		if err != nil {
			return err
		}
		o.Address, o.Name = "unix://"+sock, "cmd/extproc"
		er, err := load.RunExtProc(ctx, o)
		if err != nil {
			return err
		}
		b.rep.openLoop = append(b.rep.openLoop, [2]load.Result{fr, er})
	}
	return nil
}

// decisionRounds is how many times each closed-loop pair of runs (floor, cmd/extproc) is made:
// single rounds on these two shared cores vary by ±15-30%, and the median of five moves less than
// that of three.
const decisionRounds = 5

// medianRound is the round whose cmd/extproc-to-floor ratio is the median of rs.
func medianRound(rs [][2]load.Result) [2]load.Result {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b [2]load.Result) int { return cmp.Compare(decisionRatio(a), decisionRatio(b)) })
	return sorted[len(sorted)/2]
}

// decisionRatio is cmd/extproc's decisions/s over the floor's in one round.
func decisionRatio(p [2]load.Result) float64 { return p[1].PerSecond / p[0].PerSecond }

// openLoopInFlight bounds the streams in flight of an open-loop run (Envoy's bound is the
// cluster's circuit breaker; this one is only reached when the service falls far behind).
const openLoopInFlight = 64

// neutronModeRSS measures cmd/extproc as it runs in production, with Neutron as the port source
// (no ports index in the process), after 100k VMs were each resolved once. The Neutron is
// load.FakeNeutron in this process: 100k ports in a real Neutron would take hours to create.
func (b *bench) neutronModeRSS(ctx context.Context, targets []load.Target) (memRow, error) {
	fake := &load.FakeNeutron{}
	l, err := listen.Open("127.0.0.1:0")
	if err != nil {
		return memRow{}, err
	}
	fctx, stopFake := context.WithCancel(ctx)
	defer stopFake()
	go load.ServeHTTPOn(fctx, l, fake)
	adminPort, err := freePort()
	if err != nil {
		return memRow{}, err
	}
	sock := b.path("extproc-neutron.sock")
	ep, err := b.start("extproc-neutron", "", nil, b.bin("extproc"), "--listen", "unix://"+sock,
		"--admin-listen", fmt.Sprintf("127.0.0.1:%d", adminPort), "--neutron-url", "http://"+l.Addr().String()+"/",
		"--secret-file", b.path("secret"), "--cache-size", "200000", "--cache-ttl", "10m", "--log-level", "warn")
	if err != nil {
		return memRow{}, err
	}
	defer ep.stop(grace)
	if err := waitHTTP(ctx, ep, fmt.Sprintf("http://127.0.0.1:%d/readyz", adminPort), 30*time.Second); err != nil {
		return memRow{}, err
	}
	rss0, _, err := rssKiB(ep.pid())
	if err != nil {
		return memRow{}, err
	}
	warm, err := load.RunExtProc(ctx, load.ExtProcOptions{Address: "unix://" + sock, Concurrency: 32, Requests: len(targets),
		Targets: targets, Name: "warm-up through Neutron"})
	if err != nil {
		return memRow{}, err
	}
	if warm.OK != len(targets) {
		return memRow{}, fmt.Errorf("warm-up through Neutron: %d of %d answered with a mutation (%s)", warm.OK, len(targets), warm.ErrorString())
	}
	time.Sleep(2 * time.Second)
	rss, hwm, err := rssKiB(ep.pid())
	if err != nil {
		return memRow{}, err
	}
	return memRow{what: fmt.Sprintf("cmd/extproc, Neutron as source (%d lookups), 100k answers cached", fake.Lookups()), startKiB: rss0, rssKiB: rss, hwmKiB: hwm}, nil
}

// xdsSection: cmd/xds on a networks file with 10k networks on one node; time to ready and RSS.
func (b *bench) xdsSection(ctx context.Context) error {
	f, err := os.Create(b.path("networks-10k.json"))
	if err != nil {
		return err
	}
	err = load.WriteNetworks(f, "bench-node", 10000)
	f.Close()
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	admin, err := freePort()
	if err != nil {
		return err
	}
	t0 := time.Now()
	x, err := b.start("xds-10k", "", nil, b.bin("xds"), "--source", "file", "--networks-file", b.path("networks-10k.json"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--admin-listen", fmt.Sprintf("127.0.0.1:%d", admin),
		"--extproc-address", "unix://"+b.path("unused.sock"), "--log-level", "warn")
	if err != nil {
		return err
	}
	defer x.stop(grace)
	if err := waitHTTP(ctx, x, fmt.Sprintf("http://127.0.0.1:%d/readyz", admin), 60*time.Second); err != nil {
		return err
	}
	ready := time.Since(t0)
	time.Sleep(2 * time.Second)
	rss, hwm, err := rssKiB(x.pid())
	if err != nil {
		return err
	}
	b.rep.xdsRSS = memRow{what: fmt.Sprintf("cmd/xds, 10k networks on one node (ready after %s, process start included)", ready.Round(10*time.Millisecond)),
		rssKiB: rss, hwmKiB: hwm}
	return nil
}

// setup starts OpenStack (with the incumbent agent), one network per chain with one steady VM and
// the boot-storm VMs, and their namespaces.
func (b *bench) setup(ctx context.Context) error {
	var err error
	b.cloud, err = openstack.Start(ctx, openstack.Options{BaseDir: b.path("openstack"), SharedSecret: secret, WithAgent: true,
		NovaCacheExpiration: 15 * time.Second, StopGrace: grace,
		Logf: func(f string, a ...any) { b.log.Info(fmt.Sprintf(f, a...)) }})
	if err != nil {
		return err
	}
	if b.fabric, err = vmnet.New(ctx, vmnet.Options{}); err != nil {
		return err
	}
	for _, c := range []struct {
		ch     *chain
		name   string
		cidr   string
		prefix string
	}{{&b.inc, "bench-incumbent", "10.71.0.0/24", "bi"}, {&b.mp, "bench-metaproxy", "10.72.0.0/24", "bm"}} {
		if c.ch.osNet, err = b.cloud.CreateNetwork(ctx, c.name, c.cidr); err != nil {
			return err
		}
		n := c.ch.osNet
		if c.ch.net, err = b.fabric.AddNetwork(ctx, vmnet.NetworkSpec{ID: n.ID, CIDR: n.CIDR, DHCPIP: n.DHCPIP, DHCPMAC: n.DHCPMAC}); err != nil {
			return err
		}
		vms := make([]*vmnet.VM, 1+b.o.stormVMs)
		osVMs := make([]openstack.VM, len(vms))
		errs := make([]error, len(vms))
		sem := make(chan struct{}, 4)
		var wg sync.WaitGroup
		for i := range vms {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				name := fmt.Sprintf("%s%d", c.prefix, i)
				vm, err := b.cloud.CreateVM(ctx, n, openstack.VMSpec{Hostname: name, UserData: []byte("#cloud-config\n{}\n")})
				if err != nil {
					errs[i] = err
					return
				}
				osVMs[i] = vm
				vms[i], errs[i] = b.fabric.AddVM(ctx, c.ch.net, vmnet.VMSpec{Name: name, IP: vm.IP, MAC: vm.MAC})
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		c.ch.steady, c.ch.nsVM, c.ch.storm = osVMs[:1], vms[:1], vms[1:]
	}
	return nil
}

// startIncumbent runs haproxy in the incumbent's qdhcp namespace with neutron's template
// (neutron/agent/metadata/driver.py), forwarding to the agent's UNIX socket.
func (b *bench) startIncumbent(ctx context.Context, name, agentSocket string) (*proc, error) {
	cfg, err := incumbent.Config{NetworkID: b.inc.osNet.ID, AgentSocket: agentSocket}.Render()
	if err != nil {
		return nil, err
	}
	cfgPath := b.path(name + ".cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := b.start(name, b.inc.net.Namespace, nil, "haproxy", "-db", "-f", cfgPath)
	if err != nil {
		return nil, err
	}
	return p, b.waitVM(ctx, p, b.inc.nsVM[0].Namespace)
}

// waitVM waits until a GET of meta_data.json from namespace ns answers 200.
func (b *bench) waitVM(ctx context.Context, p *proc, ns string) error {
	c, err := load.NamespaceClient(ns, 5*time.Second, false)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vmnet.MetadataIPv4+metaPath, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail())
		}
		time.Sleep(300 * time.Millisecond)
	}
	tail := ""
	if p != nil {
		tail = "\n" + p.tail()
	}
	return fmt.Errorf("metadata from %s not 200 within 90s (last: %s)%s", ns, last, tail)
}

// metaproxy is one running metaproxy chain.
type metaproxy struct{ procs []*proc }

func (m *metaproxy) stop() {
	for i := len(m.procs) - 1; i >= 0; i-- {
		m.procs[i].stop(grace)
	}
}

// startMetaproxy runs cmd/extproc (Neutron through the lookup counter), cmd/xds (the metaproxy
// network from a networks file, nova from metadata_agent.ini or novaPort) and the data plane.
func (b *bench) startMetaproxy(ctx context.Context, tag string, novaPort int) (*metaproxy, error) {
	nets, _ := json.Marshal(map[string]any{"nodes": map[string]any{nodeID: []map[string]string{{
		"id": b.mp.osNet.ID, "kind": "network", "interface": vmnet.DHCPInterface,
		"namespace": vmnet.NamespacePath(b.mp.net.Namespace)}}}})
	if err := os.WriteFile(b.path("networks.json"), nets, 0o644); err != nil {
		return nil, err
	}
	return b.startChain(ctx, tag, chainOptions{neutronURL: b.rep.counterURL, agentINI: b.cloud.MetadataAgentINI(), novaPort: novaPort,
		xdsSource: []string{"--source", "file", "--networks-file", b.path("networks.json")}, vmNamespace: b.mp.nsVM[0].Namespace})
}

// chainOptions say what one metaproxy chain is started on.
type chainOptions struct {
	neutronURL, agentINI string
	novaPort             int      // nova from agentINI when 0
	xdsSource            []string // cmd/xds's source flags
	vmNamespace          string   // a VM whose metadata says the chain is up
}

// startChain runs cmd/extproc, cmd/xds and the data plane (the stand-in, or Envoy with ENVOY_BIN)
// and waits until the VM of o gets its metadata through them.
func (b *bench) startChain(ctx context.Context, tag string, o chainOptions) (*metaproxy, error) {
	m := &metaproxy{}
	ok := false
	defer func() {
		if !ok {
			m.stop()
		}
	}()
	sock := b.path("extproc-" + tag + ".sock")
	epAdmin, err := freePort()
	if err != nil {
		return nil, err
	}
	ep, err := b.start("extproc-"+tag, "", nil, b.bin("extproc"), "--listen", "unix://"+sock,
		"--admin-listen", fmt.Sprintf("127.0.0.1:%d", epAdmin), "--neutron-url", o.neutronURL,
		"--metadata-agent-ini", o.agentINI, "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	m.procs = append(m.procs, ep)
	if err := waitHTTP(ctx, ep, fmt.Sprintf("http://127.0.0.1:%d/readyz", epAdmin), 60*time.Second); err != nil {
		return nil, err
	}
	xdsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	xdsAdmin, err := freePort()
	if err != nil {
		return nil, err
	}
	argv := append([]string{b.bin("xds")}, o.xdsSource...)
	argv = append(argv, "--listen", fmt.Sprintf("127.0.0.1:%d", xdsPort), "--admin-listen", fmt.Sprintf("127.0.0.1:%d", xdsAdmin),
		"--extproc-address", "unix://"+sock, "--metadata-agent-ini", o.agentINI, "--log-level", "warn")
	if o.novaPort != 0 {
		argv = append(argv, "--nova-host", "127.0.0.1", "--nova-port", fmt.Sprint(o.novaPort))
	}
	x, err := b.start("xds-"+tag, "", nil, argv...)
	if err != nil {
		return nil, err
	}
	m.procs = append(m.procs, x)
	if err := waitHTTP(ctx, x, fmt.Sprintf("http://127.0.0.1:%d/readyz", xdsAdmin), 60*time.Second); err != nil {
		return nil, err
	}
	dpAdmin, err := freePort()
	if err != nil {
		return nil, err
	}
	var dp *proc
	if b.o.envoyBin != "" {
		bs, err := exec.CommandContext(ctx, b.bin("xds"), "bootstrap", "--node-id", nodeID,
			"--xds-address", fmt.Sprintf("127.0.0.1:%d", xdsPort), "--admin-port", fmt.Sprint(dpAdmin)).Output()
		if err != nil {
			return nil, fmt.Errorf("xds bootstrap: %w", err)
		}
		if err := os.WriteFile(b.path("envoy-"+tag+".yaml"), bs, 0o644); err != nil {
			return nil, err
		}
		dp, err = b.start("envoy-"+tag, "", nil, b.o.envoyBin, "-c", b.path("envoy-"+tag+".yaml"), "--concurrency", "2", "--log-level", "warn")
		if err != nil {
			return nil, err
		}
	} else {
		dp, err = b.start("standin-"+tag, "", nil, b.bin("standin"), "--xds", fmt.Sprintf("127.0.0.1:%d", xdsPort),
			"--node-id", nodeID, "--admin", fmt.Sprintf("127.0.0.1:%d", dpAdmin), "--log-level", "warn")
		if err != nil {
			return nil, err
		}
	}
	m.procs = append(m.procs, dp)
	if err := b.waitVM(ctx, dp, o.vmNamespace); err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}

// httpRuns measures nova (or the upstream) directly, the incumbent and metaproxy with the same load.
func (b *bench) httpRuns(ctx context.Context, directURL string) (direct, inc, mp load.Result, err error) {
	h, err := signedHeaders(b.inc.steady[0])
	if err != nil {
		return
	}
	base := load.HTTPOptions{Concurrency: b.o.concurrency, Duration: b.o.duration}
	o := base
	o.Name, o.URL, o.Header = "direct (signed headers, from the host)", directURL+metaPath, h
	if direct, err = b.measure(ctx, o); err != nil {
		return
	}
	o = base
	o.Name, o.URL, o.Namespaces = "incumbent: VM -> haproxy -> neutron-metadata-agent", "http://"+vmnet.MetadataIPv4+metaPath, []string{b.inc.nsVM[0].Namespace}
	if inc, err = b.measure(ctx, o); err != nil {
		return
	}
	o.Name, o.Namespaces = "metaproxy: VM -> "+b.rep.dataPlaneShort()+" + cmd/extproc", []string{b.mp.nsVM[0].Namespace}
	mp, err = b.measure(ctx, o)
	return
}

// signedHeaders are the headers a proxy sends nova for vm: what a load straight to nova sends.
func signedHeaders(vm openstack.VM) (http.Header, error) {
	s, err := sign.New([]byte(secret))
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	h.Set("X-Instance-ID", vm.InstanceID)
	h.Set("X-Tenant-ID", vm.ProjectID)
	h.Set("X-Instance-ID-Signature", s.Sign(vm.InstanceID))
	h.Set("X-Forwarded-For", vm.IP)
	return h, nil
}

// measure runs one HTTP load and records the CPU time each process used per request.
func (b *bench) measure(ctx context.Context, o load.HTTPOptions) (load.Result, error) {
	before := sampleCPU()
	r, err := load.RunHTTP(ctx, o)
	if err != nil {
		return r, err
	}
	b.rep.cpu = append(b.rep.cpu, cpuRow{name: b.section + " " + r.Name, requests: r.Requests, use: diffCPU(before, sampleCPU())})
	return r, nil
}

func (b *bench) novaSection(ctx context.Context) error {
	nc, err := load.NewNeutronCounter(b.cloud.NeutronURL())
	if err != nil {
		return err
	}
	b.counter = nc
	l, err := listen.Open("127.0.0.1:0")
	if err != nil {
		return err
	}
	hctx, cancel := context.WithCancel(context.Background())
	b.stopHTTP = cancel
	go load.ServeHTTPOn(hctx, l, nc)
	b.rep.counterURL = "http://" + l.Addr().String() + "/"

	if _, err := b.startIncumbent(ctx, "haproxy-nova", b.cloud.AgentSocket()); err != nil {
		return err
	}
	m, err := b.startMetaproxy(ctx, "nova", 0)
	if err != nil {
		return err
	}
	b.rep.mpNova = m
	b.section = "(a)"
	d, i, p, err := b.httpRuns(ctx, b.cloud.NovaURL())
	if err != nil {
		return err
	}
	b.rep.nova = [3]load.Result{d, i, p}
	return nil
}

func (b *bench) stormSection(ctx context.Context) error {
	ns := func(vms []*vmnet.VM) []string {
		out := make([]string, len(vms))
		for i, v := range vms {
			out[i] = v.Namespace
		}
		return out
	}
	inc, err := load.RunBootStorm(ctx, load.BootStormOptions{Namespaces: ns(b.inc.storm), Name: "incumbent"})
	if err != nil {
		return err
	}
	mp, err := load.RunBootStorm(ctx, load.BootStormOptions{Namespaces: ns(b.mp.storm), Name: "metaproxy",
		CountURL: b.rep.counterURL + strings.TrimPrefix(load.CounterPath, "/"), CountMetric: load.PortLookupMetric})
	if err != nil {
		return err
	}
	b.rep.storm = [2]load.Result{inc, mp}
	return nil
}

var iniLine = regexp.MustCompile(`(?m)^(nova_metadata_port|metadata_proxy_socket)\s*=.*$`)

func (b *bench) trivialSection(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	up, err := b.start("upstream", "", nil, b.bin("loadgen"), "upstream", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	upURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(ctx, up, upURL+"/", 10*time.Second); err != nil {
		return err
	}
	// A second neutron-metadata-agent, identical but for nova's port and its socket.
	ini, err := os.ReadFile(b.cloud.MetadataAgentINI())
	if err != nil {
		return err
	}
	sock := b.path("agent-trivial.sock")
	ini2 := iniLine.ReplaceAllStringFunc(string(ini), func(line string) string {
		if strings.HasPrefix(line, "nova_metadata_port") {
			return fmt.Sprintf("nova_metadata_port = %d", port)
		}
		return "metadata_proxy_socket = " + sock
	})
	if err := os.WriteFile(b.path("metadata_agent-trivial.ini"), []byte(ini2), 0o600); err != nil {
		return err
	}
	agent, err := b.start("neutron-metadata-agent-trivial", "", nil, "/usr/bin/neutron-metadata-agent",
		"--config-file", b.path("metadata_agent-trivial.ini"), "--log-file", b.path("neutron-metadata-agent-trivial.agentlog"))
	if err != nil {
		return err
	}
	if err := waitSocket(ctx, agent, sock, 60*time.Second); err != nil {
		return err
	}
	// Swap the data planes over to the trivial upstream.
	b.mu.Lock()
	var old []*proc
	for _, p := range b.procs {
		if p.name == "haproxy-nova" {
			old = append(old, p)
		}
	}
	b.mu.Unlock()
	for _, p := range old {
		p.stop(grace)
	}
	if b.rep.mpNova != nil {
		b.rep.mpNova.stop()
	}
	if _, err := b.startIncumbent(ctx, "haproxy-trivial", sock); err != nil {
		return err
	}
	if _, err := b.startMetaproxy(ctx, "trivial", port); err != nil {
		return err
	}
	b.section = "(b)"
	d, i, p, err := b.httpRuns(ctx, upURL)
	if err != nil {
		return err
	}
	b.rep.trivial = [3]load.Result{d, i, p}
	return nil
}

// machine describes where the numbers come from.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	load1, _ := os.ReadFile("/proc/loadavg")
	out, _ := exec.Command("nproc").Output()
	return fmt.Sprintf("%s CPUs (%s), kernel %s, load average at start %s", strings.TrimSpace(string(out)), cpu,
		strings.TrimSpace(string(kernel)), strings.Join(strings.Fields(string(load1))[:3], " "))
}
