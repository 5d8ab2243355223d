//go:build e2e

package ovnlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// DefaultChassis is the chassis name (Open_vSwitch external_ids:system-id) and host name
// (external_ids:hostname, Neutron's binding:host_id) of the lab's one chassis.
const DefaultChassis = "ovnlab-chassis"

// Bridge is the integration bridge.
const Bridge = "br-int"

// labMarkerDir records each running lab (owner and base directory), so that the next Start kills
// what a crashed lab's agent left outside its process groups.
const labMarkerDir = "/run/metaproxy-e2e/ovnlab"

// labLock is held (flock) by the one lab that runs on the host: `go test ./e2e/...` runs several
// test binaries at once, and two labs cannot share the netdev datapath, br-int or the chassis name.
const labLock = "/run/metaproxy-e2e/ovnlab.lock"

// Options configures Start.
type Options struct {
	// BaseDir holds every database, socket, configuration and log. Empty: a new directory under
	// os.TempDir() that Close removes. UNIX socket paths must stay under 108 bytes: keep it short.
	BaseDir string
	// SharedSecret is nova's metadata_proxy_shared_secret (and the agent's). Required.
	SharedSecret string
	// Chassis names the chassis and its host. Empty: DefaultChassis.
	Chassis string
	// ProjectID owns networks and VMs; empty: openstack.DefaultProjectID.
	ProjectID string
	// NovaCacheExpiration is nova's metadata_cache_expiration (see openstack.Options).
	NovaCacheExpiration time.Duration
	// AgentDownTime is neutron's agent_down_time; zero: neutron's 75s.
	AgentDownTime time.Duration
	// StopGrace bounds each process's exit after SIGTERM; zero: 15s.
	StopGrace time.Duration
	// Logf receives progress lines (e.g. t.Logf). Nil: silent.
	Logf func(format string, args ...any)
}

// Lab is a running OVN chassis with neutron-server (ML2/OVN) and nova's metadata API.
type Lab struct {
	opts     Options
	base     string
	ownsBase bool
	cloud    *openstack.Cloud
	marker   string

	lock *os.File // labLock, held until Close

	mu      sync.Mutex
	daemons []*openstack.Process // in start order; stopped in reverse
	agent   *openstack.Process
	nets    []Network
	vms     map[string]*VM
	closed  bool
}

// Available reports why the lab cannot run here (not root, a program missing, another
// ovs-vswitchd running), or nil. Tests skip on its error.
func Available() error {
	var errs []error
	if err := openstack.Available(false); err != nil {
		errs = append(errs, err)
	}
	for _, b := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl", "ovn-northd",
		"ovn-controller", "ovn-nbctl", "ovn-sbctl", "dhclient", "iptables", "neutron-ovn-metadata-agent", "haproxy", "sudo"} {
		if _, err := exec.LookPath(b); err != nil {
			errs = append(errs, fmt.Errorf("%s missing (run `make deps` as root)", b))
		}
	}
	for _, schema := range []string{"/usr/share/openvswitch/vswitch.ovsschema", "/usr/share/ovn/ovn-nb.ovsschema", "/usr/share/ovn/ovn-sb.ovsschema"} {
		if _, err := os.Stat(schema); err != nil {
			errs = append(errs, fmt.Errorf("%s missing (run `make deps` as root)", schema))
		}
	}
	return errors.Join(errs...)
}

// Start brings up OVS and OVN, then neutron-server (ML2/OVN) and nova, and returns once neutron
// can bind ports to the chassis. On error everything started is stopped.
func Start(ctx context.Context, o Options) (l *Lab, err error) {
	if o.SharedSecret == "" {
		return nil, errors.New("ovnlab: Options.SharedSecret is required")
	}
	if err := Available(); err != nil {
		return nil, fmt.Errorf("ovnlab: cannot run here: %w", err)
	}
	if o.Chassis == "" {
		o.Chassis = DefaultChassis
	}
	if o.StopGrace == 0 {
		o.StopGrace = 15 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	t0 := time.Now()
	l = &Lab{opts: o, base: o.BaseDir, vms: map[string]*VM{}}
	if l.lock, err = lockHost(ctx, o.Logf); err != nil {
		return nil, err
	}
	if err := reapStale(ctx, o.Logf); err != nil {
		l.lock.Close()
		return nil, err
	}
	if other := liveProcesses("ovs-vswitchd"); len(other) > 0 {
		l.lock.Close()
		return nil, fmt.Errorf("ovnlab: another ovs-vswitchd runs on this host (pids %v): only one netdev datapath may; stop it (systemctl stop openvswitch-switch) or wait for the other run", other)
	}
	if l.base == "" {
		if l.base, err = os.MkdirTemp("", "ovnlab-"); err != nil {
			l.lock.Close()
			return nil, fmt.Errorf("ovnlab: base dir: %w", err)
		}
		l.ownsBase = true
	}
	defer func() {
		if err != nil {
			o.Logf("ovnlab: start failed, logs:\n%s", l.Logs())
			_ = l.Close()
			l = nil
		}
	}()
	for _, d := range []string{"run", "log", "ovs", "ovn", "mdagent/lock", "vm"} {
		if err := os.MkdirAll(l.path(d), 0o755); err != nil {
			return l, fmt.Errorf("ovnlab: %w", err)
		}
	}
	if err := l.writeMarker(); err != nil {
		return l, err
	}
	if err := l.startOVS(ctx); err != nil {
		return l, err
	}
	o.Logf("ovnlab: OVS and OVN up in %s, chassis %s registered", time.Since(t0).Round(100*time.Millisecond), o.Chassis)

	cloud, err := openstack.Start(ctx, openstack.Options{
		BaseDir: l.path("openstack"), SharedSecret: o.SharedSecret, ProjectID: o.ProjectID,
		NovaCacheExpiration: o.NovaCacheExpiration, StopGrace: o.StopGrace, Logf: o.Logf,
		OVN: &openstack.OVN{NB: l.NBDB(), SB: l.SBDB(), AgentDownTime: o.AgentDownTime},
	})
	if err != nil {
		return l, fmt.Errorf("ovnlab: %w", err)
	}
	l.cloud = cloud
	if err := l.waitNeutronReady(ctx); err != nil {
		return l, err
	}
	o.Logf("ovnlab: up in %s (base %s)", time.Since(t0).Round(100*time.Millisecond), l.base)
	return l, nil
}

// Cloud is the lab's neutron-server and nova metadata API.
func (l *Lab) Cloud() *openstack.Cloud { return l.cloud }

// Chassis is the chassis name, also its host name in Neutron (binding:host_id).
func (l *Lab) Chassis() string { return l.opts.Chassis }

// OVSDB is the local Open_vSwitch database's remote.
func (l *Lab) OVSDB() string { return "unix:" + l.path("run/db.sock") }

// NBDB and SBDB are the Northbound and Southbound databases' remotes.
func (l *Lab) NBDB() string { return "unix:" + l.path("run/ovnnb_db.sock") }

// SBDB is the Southbound database's remote (also Open_vSwitch external_ids:ovn-remote).
func (l *Lab) SBDB() string { return "unix:" + l.path("run/ovnsb_db.sock") }

// BaseDir is the lab's directory.
func (l *Lab) BaseDir() string { return l.base }

func (l *Lab) path(rel string) string { return filepath.Join(l.base, rel) }

// env is what every OVS and OVN program of the lab is run with, so that none uses /var/run.
func (l *Lab) env() []string {
	return []string{"OVS_RUNDIR=" + l.path("run"), "OVS_LOGDIR=" + l.path("log"), "OVS_DBDIR=" + l.path("ovs"),
		"OVN_RUNDIR=" + l.path("run"), "OVN_LOGDIR=" + l.path("log"), "OVN_DBDIR=" + l.path("ovn")}
}

// VSCtl runs ovs-vsctl on the lab's Open_vSwitch database and returns its output.
func (l *Lab) VSCtl(ctx context.Context, args ...string) (string, error) {
	return l.tool(ctx, "ovs-vsctl", append([]string{"--db=" + l.OVSDB(), "--timeout=20"}, args...)...)
}

// SBCtl runs ovn-sbctl on the lab's Southbound database.
func (l *Lab) SBCtl(ctx context.Context, args ...string) (string, error) {
	return l.tool(ctx, "ovn-sbctl", append([]string{"--db=" + l.SBDB(), "--timeout=20"}, args...)...)
}

// NBCtl runs ovn-nbctl on the lab's Northbound database.
func (l *Lab) NBCtl(ctx context.Context, args ...string) (string, error) {
	return l.tool(ctx, "ovn-nbctl", append([]string{"--db=" + l.NBDB(), "--timeout=20"}, args...)...)
}

func (l *Lab) tool(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), l.env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// daemon starts one long-running OVS or OVN program of the lab.
func (l *Lab) daemon(name string, argv ...string) (*openstack.Process, error) {
	p, err := openstack.StartProcess(name, l.path("log/"+name+".out"), l.env(), argv...)
	if err != nil {
		return nil, fmt.Errorf("ovnlab: %w", err)
	}
	l.mu.Lock()
	l.daemons = append(l.daemons, p)
	l.mu.Unlock()
	return p, nil
}

// startOVS creates the three databases and starts ovsdb-server (Open_vSwitch, NB, SB),
// ovs-vswitchd with br-int on the netdev datapath, ovn-northd and ovn-controller, and waits for
// the chassis to be registered in the Southbound database.
func (l *Lab) startOVS(ctx context.Context) error {
	dbs := []struct{ name, file, schema, sock, remote string }{
		{"ovsdb-server", "ovs/conf.db", "/usr/share/openvswitch/vswitch.ovsschema", "run/db.sock", "db:Open_vSwitch,Open_vSwitch,manager_options"},
		{"ovsdb-server-nb", "ovn/ovnnb_db.db", "/usr/share/ovn/ovn-nb.ovsschema", "run/ovnnb_db.sock", "db:OVN_Northbound,NB_Global,connections"},
		{"ovsdb-server-sb", "ovn/ovnsb_db.db", "/usr/share/ovn/ovn-sb.ovsschema", "run/ovnsb_db.sock", "db:OVN_Southbound,SB_Global,connections"},
	}
	for _, db := range dbs {
		if _, err := l.tool(ctx, "ovsdb-tool", "create", l.path(db.file), db.schema); err != nil {
			return fmt.Errorf("ovnlab: %w", err)
		}
		p, err := l.daemon(db.name, "ovsdb-server", l.path(db.file), "--remote=punix:"+l.path(db.sock), "--remote="+db.remote,
			"--pidfile="+l.path("run/"+db.name+".pid"), "--unixctl="+l.path("run/"+db.name+".ctl"),
			"--log-file="+l.path("log/"+db.name+".log"), "--no-chdir", "-vconsole:off")
		if err != nil {
			return err
		}
		if err := waitFor(ctx, 20*time.Second, db.name+" socket", p, func() error { return isSocket(l.path(db.sock)) }); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"ovs-vsctl", "--db=" + l.OVSDB(), "--no-wait", "init"},
		{"ovs-vsctl", "--db=" + l.OVSDB(), "--no-wait", "set", "Open_vSwitch", ".",
			"external_ids:system-id=" + l.opts.Chassis, "external_ids:hostname=" + l.opts.Chassis,
			"external_ids:ovn-remote=" + l.SBDB(), "external_ids:ovn-encap-type=geneve", "external_ids:ovn-encap-ip=127.0.0.1",
			"external_ids:ovn-bridge=" + Bridge, "external_ids:ovn-bridge-datapath-type=netdev"},
		{"ovn-nbctl", "--db=" + l.NBDB(), "--no-wait", "init"},
		{"ovn-sbctl", "--db=" + l.SBDB(), "init"},
	}
	for _, s := range steps {
		if _, err := l.tool(ctx, s[0], s[1:]...); err != nil {
			return fmt.Errorf("ovnlab: %w", err)
		}
	}
	if _, err := l.daemon("ovs-vswitchd", "ovs-vswitchd", l.OVSDB(), "--pidfile="+l.path("run/ovs-vswitchd.pid"),
		"--unixctl="+l.path("run/ovs-vswitchd.ctl"), "--log-file="+l.path("log/ovs-vswitchd.log"), "--no-chdir", "-vconsole:off"); err != nil {
		return err
	}
	// br-int on the userspace datapath; fail-mode secure so that nothing floods before
	// ovn-controller programs it. Without --no-wait: returns once ovs-vswitchd made it.
	if _, err := l.VSCtl(ctx, "--may-exist", "add-br", Bridge, "--", "set", "Bridge", Bridge, "datapath_type=netdev",
		"fail-mode=secure", "other-config:disable-in-band=true"); err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	if _, err := l.daemon("ovn-northd", "ovn-northd", "--ovnnb-db="+l.NBDB(), "--ovnsb-db="+l.SBDB(),
		"--pidfile="+l.path("run/ovn-northd.pid"), "--unixctl="+l.path("run/ovn-northd.ctl"),
		"--log-file="+l.path("log/ovn-northd.log"), "--no-chdir", "-vconsole:off"); err != nil {
		return err
	}
	ctl, err := l.daemon("ovn-controller", "ovn-controller", l.OVSDB(), "--pidfile="+l.path("run/ovn-controller.pid"),
		"--log-file="+l.path("log/ovn-controller.log"), "--no-chdir", "-vconsole:off")
	if err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, "chassis in the Southbound database", ctl, func() error {
		out, err := l.SBCtl(ctx, "--bare", "--columns=name", "list", "Chassis_Private")
		if err != nil {
			return err
		}
		if !strings.Contains(out, l.opts.Chassis) {
			return fmt.Errorf("Chassis_Private: %q", out)
		}
		return nil
	})
}

// waitNeutronReady waits until the ovn mechanism driver can bind ports: neutron sees the
// ovn-controller agent alive, and the neutron_pg_drop port group exists in the Northbound database.
func (l *Lab) waitNeutronReady(ctx context.Context) error {
	if err := waitFor(ctx, 60*time.Second, "neutron sees the ovn-controller agent alive", nil, func() error {
		agents, err := l.Agents(ctx)
		if err != nil {
			return err
		}
		for _, a := range agents {
			if a.Binary == "ovn-controller" && a.Host == l.opts.Chassis && a.Alive {
				return nil
			}
		}
		return fmt.Errorf("agents: %+v", agents)
	}); err != nil {
		return err
	}
	return waitFor(ctx, 60*time.Second, "port group neutron_pg_drop in the Northbound database", nil, func() error {
		out, err := l.NBCtl(ctx, "--bare", "--columns=name", "find", "Port_Group", "name=neutron_pg_drop")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
}

// Agent is one row of `openstack network agent list` (GET /v2.0/agents).
type Agent struct {
	ID          string `json:"id"`
	Binary      string `json:"binary"`
	Host        string `json:"host"`
	Alive       bool   `json:"alive"`
	Description string `json:"description"`
	Type        string `json:"agent_type"`
}

// Agents lists Neutron's agents (ML2/OVN builds them from the Southbound Chassis_Private records).
func (l *Lab) Agents(ctx context.Context) ([]Agent, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.cloud.NeutronURL()+"v2.0/agents", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Agents []Agent `json:"agents"`
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v2.0/agents: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("GET /v2.0/agents: %w", err)
	}
	return body.Agents, nil
}

// Close stops everything the lab started and removes what it made on the host: the VMs' and the
// networks' ovnmeta namespaces (whoever made them), the agent's proxies, the daemons (ovs-vswitchd
// with --cleanup, which removes br-int), the userspace datapath's tap. It is safe to call twice.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	vms := make([]*VM, 0, len(l.vms))
	for _, vm := range l.vms {
		vms = append(vms, vm)
	}
	nets := append([]Network(nil), l.nets...)
	daemons := l.daemons
	l.mu.Unlock()

	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for _, vm := range vms {
		vm.stopDHCP(l.opts.StopGrace)
		errs = append(errs, vmnet.DeleteNamespace(ctx, vm.Namespace))
	}
	l.StopAgent()
	killByCommandLine(l.path("mdagent") + "/") // the agent's haproxies and privsep helpers
	for _, n := range nets {
		errs = append(errs, vmnet.DeleteNamespace(ctx, n.Namespace()))
	}
	if l.cloud != nil {
		errs = append(errs, l.cloud.Close())
	}
	// ovs-vswitchd first with --cleanup (it removes br-int's tap), then the rest in reverse order.
	if _, err := l.tool(ctx, "ovs-appctl", "-t", l.path("run/ovs-vswitchd.ctl"), "exit", "--cleanup"); err != nil {
		l.opts.Logf("ovnlab: ovs-appctl exit --cleanup: %v", err)
	}
	for i := len(daemons) - 1; i >= 0; i-- {
		daemons[i].Stop(l.opts.StopGrace)
	}
	killByCommandLine(l.base + "/") // anything else of this lab (a dhclient that escaped its group)
	removeDatapathTaps(ctx)
	if l.marker != "" {
		os.Remove(l.marker)
	}
	if l.ownsBase {
		errs = append(errs, os.RemoveAll(l.base))
	}
	l.opts.Logf("ovnlab: stopped in %s", time.Since(t0).Round(100*time.Millisecond))
	l.lock.Close() // releases the host
	return errors.Join(errs...)
}

// lockHost waits (as long as ctx allows) until no other lab runs on this host, and returns the
// held lock; closing the file releases it, and so does this process's end.
func lockHost(ctx context.Context, logf func(string, ...any)) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(labLock), 0o755); err != nil {
		return nil, fmt.Errorf("ovnlab: %w", err)
	}
	f, err := os.OpenFile(labLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("ovnlab: %w", err)
	}
	for waited := false; ; waited = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("ovnlab: lock %s: %w", labLock, err)
		}
		if !waited {
			logf("ovnlab: another lab runs on this host; waiting for it to end")
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("ovnlab: another lab kept %s: %w", labLock, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Logs returns the last lines of the lab's logs and of the cloud's, for a failing test to print.
func (l *Lab) Logs() string {
	const lines = 40
	files, _ := filepath.Glob(l.path("log/*"))
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		fmt.Fprintf(&b, "==> %s (last %d lines) <==\n%s\n", f, len(all), strings.Join(all, "\n"))
	}
	if l.cloud != nil {
		b.WriteString(l.cloud.Logs())
	}
	return b.String()
}

// writeMarker records this lab (owner, base directory) for reapStale.
func (l *Lab) writeMarker() error {
	if err := os.MkdirAll(labMarkerDir, 0o755); err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	l.marker = filepath.Join(labMarkerDir, strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(l.marker, []byte(vmnet.OwnerID()+"\n"+l.base+"\n"), 0o644); err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	return nil
}

// reapStale cleans up after labs whose test process died: their daemons' process groups
// (openstack.ReapStale), their namespaces (vmnet.New does that), what their agent left outside
// its process group (haproxy, privsep helpers: by the base directory in their command line), and
// the userspace datapath's taps.
func reapStale(ctx context.Context, logf func(string, ...any)) error {
	for _, k := range openstack.ReapStale() {
		logf("ovnlab: killed leftover %s of an earlier run", k)
	}
	f, err := vmnet.New(ctx, vmnet.Options{Logf: logf})
	if err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	_ = f.Close()
	entries, _ := os.ReadDir(labMarkerDir)
	for _, e := range entries {
		path := filepath.Join(labMarkerDir, e.Name())
		b, err := os.ReadFile(path)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if err != nil || len(lines) != 2 {
			os.Remove(path)
			continue
		}
		if vmnet.OwnerAlive(lines[0]) {
			continue
		}
		if n := killByCommandLine(lines[1] + "/"); n > 0 {
			logf("ovnlab: killed %d leftover processes of the lab in %s", n, lines[1])
		}
		os.Remove(path)
	}
	if len(liveProcesses("ovs-vswitchd")) == 0 {
		removeDatapathTaps(ctx)
	}
	return nil
}

// removeDatapathTaps deletes the tap devices a netdev ovs-vswitchd leaves behind (br-int survives
// a plain SIGTERM, ovs-netdev even `exit --cleanup`), if there are any.
func removeDatapathTaps(ctx context.Context) {
	for _, dev := range []string{Bridge, "ovs-netdev"} {
		if exec.CommandContext(ctx, "ip", "link", "show", dev).Run() == nil {
			_ = exec.CommandContext(ctx, "ip", "tuntap", "del", "dev", dev, "mode", "tap").Run()
		}
	}
}

// killByCommandLine SIGKILLs every live process whose command line contains needle, except this
// one; it returns how many it killed.
func killByCommandLine(needle string) int {
	if needle == "" || needle == "/" {
		return 0
	}
	n := 0
	for _, pid := range pids() {
		if pid == os.Getpid() || !alive(pid) {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		s := string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		if strings.Contains(s, needle) {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}

// liveProcesses returns the pids of live (not zombie) processes named comm.
func liveProcesses(comm string) []int {
	var out []int
	for _, pid := range pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(b)) == comm && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func pids() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie. This sandbox's pid 1 does not reap
// orphans, so exited daemons linger as zombies; a zombie leader whose other threads still run
// (ovs-vswitchd while it exits) counts as alive.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	zombie, threads := false, 1
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "State:"); ok {
			zombie = strings.HasPrefix(strings.TrimSpace(v), "Z")
		}
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			threads, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return !zombie || threads > 1
}

// waitFor polls cond every 100 ms until it holds, p (if not nil) exits, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, p *openstack.Process, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if p != nil {
			if done, perr := p.Exited(); done {
				return fmt.Errorf("ovnlab: waiting for %s: the process exited: %v", what, perr)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ovnlab: %s: not within %s: %v", what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func isSocket(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a socket", path)
	}
	return nil
}
