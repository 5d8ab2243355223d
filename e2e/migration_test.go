//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/clients"
	"github.com/metaproxy/metaproxy/e2e/internal/incumbent"
	"github.com/metaproxy/metaproxy/e2e/internal/load"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// TestMigrationFromIncumbent performs docs/migrate-from-neutron-metadata-agent.md on one network,
// step by step and in the guide's order, against the real incumbent: neutron-metadata-agent (over
// RabbitMQ) behind haproxy with neutron's own template in the network's qdhcp namespace. The switch
// (metaproxy's listener added beside haproxy, then haproxy soft-stopped) and the rollback happen
// with VM requests in flight, and not one of them may fail.
func TestMigrationFromIncumbent(t *testing.T) {
	if err := openstack.Available(true); err != nil {
		t.Skipf("the migration scenario cannot run here: %v", err)
	}
	haproxyBin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (run `make deps` as root)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	m := setupMigration(t, ctx, haproxyBin)
	network := m.nets["net-m"]
	ns := m.nsNs["net-m"].Namespace
	vms := []*vm{m.vms["m1"], m.vms["m2"]}

	// Each step needs the previous one: stop at the first that fails.
	if !t.Run("0_incumbent_serves", func(t *testing.T) {
		for _, v := range vms {
			r := m.curl(t, v, "GET", "/openstack/latest/meta_data.json", nil, nil)
			ownMetadata(t, v, r)
			if r.Header.Get("Server") == "envoy" {
				t.Fatalf("before the migration the answer came from Envoy (Server: envoy)")
			}
		}
		if n := len(m.recorder.all()); n != 0 {
			t.Fatalf("%d requests reached nova through metaproxy before it was started", n)
		}
		if got := listenersOn80(t, ns); len(got) != 1 || got[0] != "haproxy" {
			t.Fatalf("listeners on :80 in %s: %v, want haproxy alone", ns, got)
		}
	}) {
		return
	}

	// Guide, "0. Before you start". Processes are started by the test, not a step, so that they
	// outlive the step.
	m.startMetaproxy(t)
	if !t.Run("guide_0_metaproxy_beside_the_incumbent_serving_nothing", func(t *testing.T) {
		if got := listenersOn80(t, ns); len(got) != 1 || got[0] != "haproxy" {
			t.Fatalf("with an empty networks file, listeners on :80 in %s: %v, want haproxy alone", ns, got)
		}
		// `extproc resolve` answers like the incumbent, before any VM traffic reaches metaproxy.
		for _, v := range vms {
			out := m.resolve(t, network.ID, v.os.IP)
			if !strings.Contains(out, "forwarded to nova as instance "+v.os.InstanceID) {
				t.Errorf("extproc resolve %s: %s", v.os.IP, out)
			}
		}
		if out := m.resolve(t, network.ID, "10.0.0.77"); !strings.Contains(out, "answered 404") {
			t.Errorf("extproc resolve for an address without a port: %s", out)
		}
	}) {
		return
	}

	// Guide, "1. Switch one network", step 1: let xDS add the listener.
	if !t.Run("guide_1.1_xds_adds_the_listener_beside_haproxy", func(t *testing.T) {
		m.writeNetworks(t, network.ID)
		eventually(t, 30*time.Second, "the data plane serves the network's listener", func() error {
			_, names, err := httpGet("http://" + m.dpAdmin + "/listeners")
			if err != nil || strings.Contains(names, listenerName(network)) {
				return err
			}
			// A bind error (no SO_REUSEPORT, another uid) shows in the data plane's stats.
			_, stats, _ := httpGet("http://" + m.dpAdmin + "/stats")
			return fmt.Errorf("listeners:\n%s\nstats:\n%s", names, stats)
		})
		bothListen(t, ns, m.dataplaneComm(), m.dpAdmin)
	}) {
		return
	}

	// Step 2: verify with traffic. Both proxies take new connections; every answer is the VM's own.
	if !t.Run("guide_1.2_both_proxies_answer", func(t *testing.T) {
		bothAnswer(t, vms)
		code, body, err := httpGet("http://" + m.dpAdmin + "/stats")
		if err != nil || code != 200 || !statsForNetwork(body, network.ID) {
			t.Fatalf("data plane stats show no request for network %s: %d %v\n%s", network.ID, code, err, body)
		}
		if bad := m.recorder.unsigned(); len(bad) > 0 {
			t.Fatalf("unsigned requests reached nova: %+v", bad)
		}
	}) {
		return
	}

	// Step 3: stop haproxy for that network (SIGUSR1: soft stop) while the VMs keep asking, after
	// letting the kernel hand connections queued on haproxy's socket to Envoy's (tcp_migrate_req).
	if !t.Run("guide_1.3_haproxy_soft_stops_under_load", func(t *testing.T) {
		if out, err := exec.Command("ip", "netns", "exec", m.nsNs["net-m"].Namespace, "sysctl", "-w", "net.ipv4.tcp_migrate_req=1").CombinedOutput(); err != nil {
			t.Logf("tcp_migrate_req not available on this kernel (%v: %s): relying on the soft stop alone", err, out)
		}
		haproxyBefore := haproxyServed(m.haproxy.logs())
		recorderBefore := len(m.recorder.all())
		l := startVMLoad(t, vms, 2, 25*time.Millisecond)
		l.waitBoth(t, 20, 30*time.Second)
		time.Sleep(time.Until(l.start.Add(4 * time.Second)))
		// Requests certainly in flight at the soft stop: sent before it, their bodies after.
		slow := startSlowRequests(t, vms, 8)
		stopAt := time.Now()
		if err := m.haproxy.signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if done, how := m.haproxy.exited(); done {
			t.Errorf("haproxy exited (%s) with requests in flight", how)
		}
		slowVia := slow.finish(t)
		if slowVia[false] == 0 {
			t.Errorf("none of the requests in flight at the soft stop went through haproxy (%v)", slowVia)
		}
		if !m.haproxy.wait(45 * time.Second) {
			l.stop()
			t.Fatal("haproxy did not exit within 45 s of its soft stop")
		}
		exitedAt := time.Now()
		time.Sleep(4 * time.Second)
		res := l.stop()
		t.Logf("load: %d requests in %s (%d via haproxy, %d via metaproxy); haproxy exited %s after SIGUSR1; %d of %d requests in flight at SIGUSR1 went through haproxy",
			res.total(), res.duration().Round(time.Millisecond), res.count(false), res.count(true), exitedAt.Sub(stopAt).Round(time.Millisecond),
			slowVia[false], slowVia[false]+slowVia[true])
		res.assertNoFailures(t)
		if res.countSince(false, stopAt, false) == 0 || res.countSince(true, stopAt, false) == 0 {
			t.Errorf("before the soft stop: %d via haproxy, %d via metaproxy; want both", res.countSince(false, stopAt, false), res.countSince(true, stopAt, false))
		}
		res.assertSwitched(t, exitedAt, true)
		// Each side's own record agrees with what the VMs saw.
		if got, want := haproxyServed(m.haproxy.logs())-haproxyBefore, res.count(false)+slowVia[false]; got != want {
			t.Errorf("haproxy logged %d meta_data.json requests, the VMs got %d answers via haproxy", got, want)
		}
		if got, want := len(m.recorder.all())-recorderBefore, res.count(true)+slowVia[true]; got != want {
			t.Errorf("%d requests reached nova through metaproxy, the VMs got %d answers via metaproxy", got, want)
		}
		if got := listenersOn80(t, ns); len(got) != 1 || got[0] != m.dataplaneComm() {
			t.Errorf("listeners on :80 in %s after the switch: %v, want the data plane alone", ns, got)
		}
	}) {
		return
	}

	// Step 4: roll back, with requests in flight: haproxy comes back (here started as the DHCP
	// agent would respawn it), then the network leaves the networks file and the listener goes.
	m.startHaproxy(t)
	t.Run("guide_1.4_rollback_under_load", func(t *testing.T) {
		eventually(t, 15*time.Second, "haproxy listens again beside the data plane", func() error {
			if got := listenersOn80(t, ns); len(got) != 2 || !contains(got, "haproxy") {
				return fmt.Errorf("listeners: %v", got)
			}
			return nil
		})
		l := startVMLoad(t, vms, 2, 25*time.Millisecond)
		l.waitBoth(t, 10, 30*time.Second)
		time.Sleep(time.Until(l.start.Add(3 * time.Second)))
		m.writeNetworks(t)
		m.waitNetwork(t, "net-m", false)
		removedAt := time.Now()
		time.Sleep(3 * time.Second)
		res := l.stop()
		t.Logf("load: %d requests in %s (%d via haproxy, %d via metaproxy)", res.total(), res.duration().Round(time.Millisecond), res.count(false), res.count(true))
		res.assertNoFailures(t)
		res.assertSwitched(t, removedAt, false)
		if got := listenersOn80(t, ns); len(got) != 1 || got[0] != "haproxy" {
			t.Errorf("listeners on :80 in %s after the rollback: %v, want haproxy alone", ns, got)
		}
	})

	t.Run("nova_never_received_an_unsigned_request_from_metaproxy", func(t *testing.T) {
		if bad := m.recorder.unsigned(); len(bad) > 0 {
			t.Fatalf("%d requests reached nova without exactly one signed identity: %+v", len(bad), bad)
		}
	})
}

// migration is the migration scenario's environment: env plus the incumbent's haproxy and the
// files the guide has the operator write.
type migration struct {
	*env
	haproxyBin, haproxyCfg string
	haproxy                *proc
	networksFile           string
	extprocConfig, secret  string
}

// setupMigration brings up the OpenStack fixture with RabbitMQ and neutron-metadata-agent, one
// network with two VMs and, as the DHCP agent would, haproxy with neutron's template in the
// network's qdhcp namespace. metaproxy is not started: that is the guide's first step.
func setupMigration(t *testing.T, ctx context.Context, haproxyBin string) *migration {
	e := newEnv(t, ctx, openstack.Options{WithAgent: true, NovaCacheExpiration: 15 * time.Second})
	cloud := e.cloud
	e.addNetwork(ctx, "net-m")
	e.addVM(ctx, "m1", "net-m", "10.0.0.5")
	e.addVM(ctx, "m2", "net-m", "10.0.0.6")

	m := &migration{env: e, haproxyBin: haproxyBin}
	// Where the DHCP agent writes it: <state_path>/ns-metadata-proxy/<network id>.conf.
	netID := e.nets["net-m"].ID
	m.haproxyCfg = filepath.Join(e.dir, "neutron", "ns-metadata-proxy", netID+".conf")
	cfg, err := incumbent.Config{
		NetworkID:   netID,
		AgentSocket: cloud.AgentSocket(),
		PidFile:     filepath.Join(e.dir, "neutron", "external", "pids", netID+".pid.haproxy"),
		// Neutron logs to /dev/log; here each request goes to haproxy's log file instead, so the
		// test can count what haproxy served.
		Log: "stdout format raw",
	}.Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(m.haproxyCfg), filepath.Join(e.dir, "neutron", "external", "pids")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, m.haproxyCfg, cfg)
	m.startHaproxy(t)
	eventually(t, 60*time.Second, "the VM gets its metadata through the incumbent", func() error {
		r, err := clients.Curl(ctx, e.vms["m1"].ns, "GET", "/openstack/latest/meta_data.json", nil, nil)
		if err != nil {
			return err
		}
		if r.Status != http.StatusOK {
			return fmt.Errorf("%d %s", r.Status, r.Body)
		}
		return nil
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- haproxy log:\n%s", tail(m.haproxy.logs(), 40))
		}
	})
	return m
}

// startHaproxy starts haproxy in the network's qdhcp namespace, in the foreground (-db) so that
// the test owns its pid, as the DHCP agent's process manager runs it otherwise.
func (m *migration) startHaproxy(t *testing.T) {
	t.Helper()
	ns := m.nsNs["net-m"].Namespace
	m.haproxy = startProc(t, m.dir, "haproxy", nil, "ip", "netns", "exec", ns, m.haproxyBin, "-db", "-f", m.haproxyCfg)
	eventually(t, 15*time.Second, "haproxy listens", func() error {
		if !contains(listenersOn80(t, ns), "haproxy") {
			return fmt.Errorf("no haproxy listener in %s", ns)
		}
		return nil
	})
}

// startMetaproxy does what the guide's section 0 says: cmd/xds with an empty networks file (file
// source), cmd/extproc with metadata_agent.ini copied without its secret and the secret in its own
// file, and the data plane.
func (m *migration) startMetaproxy(t *testing.T) {
	t.Helper()
	m.networksFile = filepath.Join(m.dir, "networks.yaml")
	m.writeNetworks(t)

	// The operator's metadata_agent.ini, copied without metadata_proxy_shared_secret. The one
	// change: nova's port is the test's recorder in front of nova, so that the test sees which
	// requests metaproxy sent.
	src, err := os.ReadFile(m.cloud.MetadataAgentINI())
	if err != nil {
		t.Fatal(err)
	}
	var ini []string
	for _, line := range strings.Split(string(src), "\n") {
		key := strings.TrimSpace(strings.SplitN(line, "=", 2)[0])
		switch key {
		case "metadata_proxy_shared_secret":
			continue
		case "nova_metadata_port":
			line = fmt.Sprintf("nova_metadata_port = %d", m.recorder.port())
		}
		ini = append(ini, line)
	}
	m.ini = filepath.Join(m.dir, "metaproxy", "metadata_agent.ini")
	if err := os.MkdirAll(filepath.Dir(m.ini), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.ini, strings.Join(ini, "\n"))
	m.secret = filepath.Join(m.dir, "metaproxy", "shared-secret")
	writeFile(t, m.secret, e2eSecret+"\n")

	sock := filepath.Join(m.dir, "extproc.sock")
	m.extprocAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m.extprocConfig = filepath.Join(m.dir, "metaproxy", "extproc.yaml")
	// Neutron here is noauth: neutron_url stands for the clouds.yaml entry (os_cloud).
	writeFile(t, m.extprocConfig, fmt.Sprintf("listen: unix://%s\nadmin_listen: %s\nneutron_url: %s\nmetadata_agent_ini: %s\nlog_format: json\n",
		sock, m.extprocAdmin, m.cloud.NeutronURL(), m.ini))
	m.extprocArgs = []string{filepath.Join(m.bin, "extproc"), "--config", m.extprocConfig, "--secret-file", m.secret}
	m.extproc = startProc(t, m.dir, "extproc", nil, m.extprocArgs...)
	eventually(t, 30*time.Second, "extproc ready", func() error { return ready("http://" + m.extprocAdmin + "/readyz") })

	m.pki = newLabPKI(t, m.dir, m.bin, nodeID)
	m.xdsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	xdsAdmin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// The guide polls every 5 s; 1 s keeps the test short.
	m.xdsArgs = append([]string{filepath.Join(m.bin, "xds"), "--listen", m.xdsAddr, "--admin-listen", xdsAdmin,
		"--node-id", nodeID, "--extproc-address", "unix://" + sock, "--metadata-agent-ini", m.ini,
		"--source", "file", "--networks-file", m.networksFile, "--poll-interval", "1s"}, m.pki.xdsArgs()...)
	m.xds = startProc(t, m.dir, "xds", nil, m.xdsArgs...)
	eventually(t, 30*time.Second, "xds ready", func() error { return ready("http://" + xdsAdmin + "/readyz") })

	dpAdminPort := freePort(t)
	m.dpAdmin = fmt.Sprintf("127.0.0.1:%d", dpAdminPort)
	m.dataplane = startDataPlane(t, m.dir, m.bin, m.pki, m.xdsAddr, dpAdminPort)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{m.extproc, m.xds, m.dataplane} {
				t.Logf("---- %s log:\n%s", p.name, tail(p.logs(), 60))
			}
		}
	})
	eventually(t, 30*time.Second, "the data plane took its (listener-less) configuration", func() error {
		return ready("http://" + m.dpAdmin + "/ready")
	})
}

// dataplaneComm is the process name of the data plane as ss shows it.
func (m *migration) dataplaneComm() string { return m.dataplane.name }

// writeNetworks writes cmd/xds's networks file: this node with the given networks ("[]" if none).
func (m *migration) writeNetworks(t *testing.T, ids ...string) {
	t.Helper()
	body := fmt.Sprintf("nodes:\n  %s: []\n", nodeID)
	if len(ids) > 0 {
		body = fmt.Sprintf("nodes:\n  %s:\n", nodeID)
		for _, id := range ids {
			body += "    - id: " + id + "\n"
		}
	}
	// Replaced atomically, as an editor or configuration tool would.
	tmp := m.networksFile + ".new"
	writeFile(t, tmp, body)
	if err := os.Rename(tmp, m.networksFile); err != nil {
		t.Fatal(err)
	}
}

// resolve runs `extproc resolve` with the service's configuration file, as the guide does, and
// returns its output.
func (m *migration) resolve(t *testing.T, network, ip string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(m.bin, "extproc"), "resolve", "--config", m.extprocConfig, "--network", network, "--ip", ip)
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "answered") {
		t.Fatalf("extproc resolve --network %s --ip %s: %v\n%s", network, ip, err, out)
	}
	return string(out)
}

var ssUsers = regexp.MustCompile(`users:\(\("([^"]+)"`)

// listenersOn80 returns the process name of every TCP socket listening on 169.254.169.254:80 in
// namespace ns, as `ss -ltnp` shows them.
func listenersOn80(t *testing.T, ns string) []string {
	t.Helper()
	out, err := vmnet.Command(context.Background(), ns, "ss", "-Hltnp", "src", "169.254.169.254:80").CombinedOutput()
	if err != nil {
		t.Fatalf("ss in %s: %v\n%s", ns, err, out)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		if mm := ssUsers.FindStringSubmatch(line); mm != nil {
			names = append(names, mm[1])
		} else {
			names = append(names, "?"+line)
		}
	}
	return names
}

// bothListen waits until haproxy and the data plane (process name dataplane, admin at dpAdmin)
// both listen on 169.254.169.254:80 in namespace ns, and checks that the data plane counted no bind
// failure (no SO_REUSEPORT, another uid).
func bothListen(t *testing.T, ns, dataplane, dpAdmin string) {
	t.Helper()
	eventually(t, 10*time.Second, "haproxy and the data plane both listen on 169.254.169.254:80 in "+ns, func() error {
		got := listenersOn80(t, ns)
		if len(got) != 2 || !contains(got, "haproxy") || !contains(got, dataplane) {
			return fmt.Errorf("listeners: %v", got)
		}
		return nil
	})
	if code, body, err := httpGet("http://" + dpAdmin + "/stats"); err != nil || code != 200 || bindFailures(body) {
		t.Fatalf("data plane stats (bind error?): %d %v\n%s", code, err, body)
	}
}

// bothAnswer asks from the VMs until answers came through both haproxy and the data plane; every
// answer must be the VM's own.
func bothAnswer(t *testing.T, vms []*vm) {
	t.Helper()
	seen := map[bool]int{}
	eventually(t, 30*time.Second, "answers from both haproxy and metaproxy", func() error {
		for _, v := range vms {
			r := curlVM(t, v, "GET", "/openstack/latest/meta_data.json", nil, nil)
			ownMetadata(t, v, r)
			seen[r.Header.Get("Server") == "envoy"]++
		}
		if seen[true] == 0 || seen[false] == 0 {
			return fmt.Errorf("answers via metaproxy %d, via haproxy %d", seen[true], seen[false])
		}
		return nil
	})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// statsForNetwork reports whether the data plane counted a request on the network's listener.
func statsForNetwork(stats, netID string) bool {
	for _, line := range strings.Split(stats, "\n") {
		if strings.Contains(line, netID) && !strings.HasSuffix(line, ": 0") {
			return true
		}
	}
	return false
}

// bindFailures reports whether the data plane counted a listener it could not create.
func bindFailures(stats string) bool {
	for _, line := range strings.Split(stats, "\n") {
		if strings.HasPrefix(line, "listener_manager.listener_create_failure:") && strings.TrimSpace(strings.TrimPrefix(line, "listener_manager.listener_create_failure:")) != "0" {
			return true
		}
	}
	return false
}

// haproxyServed counts the meta_data.json requests haproxy logged (option httplog, one line each).
func haproxyServed(log string) int {
	return strings.Count(log, `"GET /openstack/latest/meta_data.json HTTP/1.1"`)
}

// vmLoad sends meta_data.json requests from VMs, one new connection per request (as cloud-init
// does: a new requests session per URL), and records every answer.
type vmLoad struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	start time.Time

	mu  sync.Mutex
	res []loadAnswer
}

// loadAnswer is one request of the load.
type loadAnswer struct {
	sent, done time.Time
	vm         string
	viaEnvoy   bool
	err        string // empty: 200 with the VM's own uuid
}

// startVMLoad runs workers clients per VM, each pausing between requests.
func startVMLoad(t *testing.T, vms []*vm, workers int, pause time.Duration) *vmLoad {
	t.Helper()
	l := &vmLoad{stopc: make(chan struct{}), start: time.Now()}
	for _, v := range vms {
		for range workers {
			c, err := load.NamespaceClient(v.ns.Namespace, 20*time.Second, false)
			if err != nil {
				t.Fatal(err)
			}
			l.wg.Add(1)
			go l.worker(c, v, pause)
		}
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *vmLoad) worker(c *http.Client, v *vm, pause time.Duration) {
	defer l.wg.Done()
	for {
		select {
		case <-l.stopc:
			return
		default:
		}
		a := loadAnswer{sent: time.Now(), vm: v.ns.Name}
		resp, err := c.Get(clients.MetadataURL + "/openstack/latest/meta_data.json")
		if err != nil {
			a.err = err.Error()
		} else {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			a.viaEnvoy = resp.Header.Get("Server") == "envoy"
			var md metaData
			switch {
			case err != nil:
				a.err = "reading the body: " + err.Error()
			case resp.StatusCode != http.StatusOK:
				a.err = fmt.Sprintf("status %d (Server: %q): %.200s", resp.StatusCode, resp.Header.Get("Server"), body)
			case json.Unmarshal(body, &md) != nil || md.UUID != v.os.InstanceID:
				a.err = fmt.Sprintf("not the VM's own metadata: %.200s", body)
			}
		}
		a.done = time.Now()
		l.mu.Lock()
		l.res = append(l.res, a)
		l.mu.Unlock()
		select {
		case <-l.stopc:
			return
		case <-time.After(pause):
		}
	}
}

func (l *vmLoad) countLocked(viaEnvoy bool) int {
	n := 0
	for _, a := range l.res {
		if a.err == "" && a.viaEnvoy == viaEnvoy {
			n++
		}
	}
	return n
}

// waitBoth waits until each proxy has answered at least n requests of this load.
func (l *vmLoad) waitBoth(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "the load is answered by both proxies", func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if e, h := l.countLocked(true), l.countLocked(false); e < n || h < n {
			return fmt.Errorf("%d answers via metaproxy, %d via haproxy", e, h)
		}
		return nil
	})
}

// stop ends the load, waits for requests in flight, and returns every answer.
func (l *vmLoad) stop() loadResults {
	l.mu.Lock()
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.mu.Unlock()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadResults{start: l.start, answers: append([]loadAnswer(nil), l.res...)}
}

// loadResults are the answers of one load run.
type loadResults struct {
	start   time.Time
	answers []loadAnswer
}

func (r loadResults) total() int { return len(r.answers) }

func (r loadResults) duration() time.Duration {
	if len(r.answers) == 0 {
		return 0
	}
	return r.answers[len(r.answers)-1].done.Sub(r.start)
}

// count is the number of successful answers via Envoy (true) or haproxy (false).
func (r loadResults) count(viaEnvoy bool) int {
	n := 0
	for _, a := range r.answers {
		if a.err == "" && a.viaEnvoy == viaEnvoy {
			n++
		}
	}
	return n
}

// countSince counts successful answers via one proxy for requests sent after t (after true) or
// answered before t (after false).
func (r loadResults) countSince(viaEnvoy bool, t time.Time, after bool) int {
	n := 0
	for _, a := range r.answers {
		if a.err != "" || a.viaEnvoy != viaEnvoy {
			continue
		}
		if (after && a.sent.After(t)) || (!after && a.done.Before(t)) {
			n++
		}
	}
	return n
}

// assertSwitched checks a load across a switch at `at`: no request sent after it was answered by
// the proxy switched away from, and at least 20 were answered by the one switched to (the data
// plane when toEnvoy, haproxy otherwise).
func (r loadResults) assertSwitched(t *testing.T, at time.Time, toEnvoy bool) {
	t.Helper()
	name := map[bool]string{true: "metaproxy", false: "haproxy"}
	if n := r.countSince(!toEnvoy, at, true); n != 0 {
		t.Errorf("%d requests sent after the switch were answered by %s", n, name[!toEnvoy])
	}
	if n := r.countSince(toEnvoy, at, true); n < 20 {
		t.Errorf("only %d requests after the switch were answered by %s", n, name[toEnvoy])
	}
}

func (r loadResults) assertNoFailures(t *testing.T) {
	t.Helper()
	var bad []string
	for _, a := range r.answers {
		if a.err != "" {
			bad = append(bad, fmt.Sprintf("%s at +%s: %s", a.vm, a.sent.Sub(r.start).Round(time.Millisecond), a.err))
		}
	}
	if len(r.answers) < 100 {
		t.Errorf("only %d requests in the load", len(r.answers))
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d VM requests failed:\n%s", len(bad), len(r.answers), strings.Join(bad, "\n"))
	}
}

// slowRequests are meta_data.json GETs whose headers are sent at once and whose (ignored) body
// follows later: requests in flight for as long as the test wants.
type slowRequests struct {
	conns []slowConn
}

type slowConn struct {
	v *vm
	c net.Conn
}

const slowBody = "{}"

// startSlowRequests opens n connections from each VM and sends each a request without its body.
// The kernel spreads them over every listener of the address.
func startSlowRequests(t *testing.T, vms []*vm, n int) *slowRequests {
	t.Helper()
	s := &slowRequests{}
	t.Cleanup(func() {
		for _, c := range s.conns {
			c.c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range vms {
		hc, err := load.NamespaceClient(v.ns.Namespace, 20*time.Second, false)
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			c, err := hc.Transport.(*http.Transport).DialContext(ctx, "tcp", strings.TrimPrefix(clients.MetadataURL, "http://")+":80")
			if err != nil {
				t.Fatalf("%s: dial: %v", v.ns.Name, err)
			}
			s.conns = append(s.conns, slowConn{v: v, c: c})
			req := fmt.Sprintf("GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(slowBody))
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatalf("%s: write: %v", v.ns.Name, err)
			}
		}
	}
	return s
}

// finish sends every body and checks every answer: 200 with the VM's own metadata. It returns how
// many were answered via Envoy (true) and via haproxy (false).
func (s *slowRequests) finish(t *testing.T) map[bool]int {
	t.Helper()
	via := map[bool]int{}
	for _, sc := range s.conns {
		sc.c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(sc.c, slowBody); err != nil {
			t.Errorf("%s: write body: %v", sc.v.ns.Name, err)
			continue
		}
	}
	for _, sc := range s.conns {
		resp, err := http.ReadResponse(bufio.NewReader(sc.c), nil)
		if err != nil {
			t.Errorf("%s: request in flight: %v", sc.v.ns.Name, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		var md metaData
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(body, &md) != nil || md.UUID != sc.v.os.InstanceID {
			t.Errorf("%s: request in flight: %d %v %.200s", sc.v.ns.Name, resp.StatusCode, err, body)
			continue
		}
		via[resp.Header.Get("Server") == "envoy"]++
	}
	return via
}
