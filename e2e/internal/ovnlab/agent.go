//go:build e2e

package ovnlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
)

// agentINI is neutron_ovn_metadata_agent.ini as the recipe runs it: the databases on the lab's
// sockets, privsep through sudo as root, and the process monitor checking its haproxies every 2 s
// (60 s by default), so that a proxy the agent would respawn is respawned within a test's patience.
var agentINI = template.Must(template.New("ovn_metadata_agent.ini").Parse(`[DEFAULT]
state_path = {{.State}}
metadata_proxy_socket = {{.State}}/metadata_proxy
nova_metadata_host = {{.NovaHost}}
nova_metadata_port = {{.NovaPort}}
nova_metadata_protocol = http
metadata_proxy_shared_secret = {{.Secret}}
metadata_workers = 1
[agent]
root_helper =
check_child_processes_interval = 2
[ovs]
ovsdb_connection = {{.OVSDB}}
[ovn]
ovn_sb_connection = {{.SBDB}}
[oslo_concurrency]
lock_path = {{.State}}/lock
`))

// AgentINI is the real agent's configuration file (written by StartAgent); metaproxy can be
// pointed at it as an operator would (its [DEFAULT] is metadata_agent.ini's, plus [ovs] and [ovn]).
func (l *Lab) AgentINI() string { return l.path("mdagent/ovn_metadata_agent.ini") }

// AgentStateDir is the agent's state_path: haproxy configurations in ovn-metadata-proxy/, pid
// files in external/pids/<network>.pid.haproxy.
func (l *Lab) AgentStateDir() string { return l.path("mdagent") }

// ProxyPidFile is where the agent keeps the pid of a network's haproxy.
func (l *Lab) ProxyPidFile(networkID string) string {
	return filepath.Join(l.AgentStateDir(), "external", "pids", networkID+".pid.haproxy")
}

// StartAgent starts the real neutron-ovn-metadata-agent and waits for its proxy socket. It then
// provisions the ovnmeta namespaces of the chassis's networks and starts a haproxy in each, as on
// a real chassis; see ProxyPID.
func (l *Lab) StartAgent(ctx context.Context) error {
	l.mu.Lock()
	if l.agent != nil || l.closed {
		l.mu.Unlock()
		return errors.New("ovnlab: the agent already runs, or the lab is closed")
	}
	l.mu.Unlock()
	host, port := l.cloud.NovaHostPort()
	f, err := os.OpenFile(l.AgentINI(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	err = agentINI.Execute(f, map[string]any{"State": l.AgentStateDir(), "NovaHost": host, "NovaPort": port,
		"Secret": l.opts.SharedSecret, "OVSDB": l.OVSDB(), "SBDB": l.SBDB()})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ovnlab: write %s: %w", l.AgentINI(), err)
	}
	sock := filepath.Join(l.AgentStateDir(), "metadata_proxy")
	_ = os.Remove(sock)
	t0 := time.Now()
	p, err := openstack.StartProcess("neutron-ovn-metadata-agent", l.path("log/ovn-metadata-agent.out"), l.env(),
		"neutron-ovn-metadata-agent", "--config-file", l.AgentINI(), "--log-file", l.path("log/ovn-metadata-agent.log"))
	if err != nil {
		return fmt.Errorf("ovnlab: %w", err)
	}
	l.mu.Lock()
	l.agent = p
	l.mu.Unlock()
	if err := waitFor(ctx, 60*time.Second, "the agent's proxy socket", p, func() error { return isSocket(sock) }); err != nil {
		return err
	}
	l.opts.Logf("ovnlab: neutron-ovn-metadata-agent listens after %s", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// StopAgent stops neutron-ovn-metadata-agent and its privsep helpers, and leaves its haproxies
// running, as stopping the agent's service does on a chassis (its haproxies then answer 503: their
// upstream is gone). Safe to call when the agent does not run.
func (l *Lab) StopAgent() {
	l.mu.Lock()
	p := l.agent
	l.agent = nil
	l.mu.Unlock()
	if p == nil {
		return
	}
	p.Stop(l.opts.StopGrace)
	// The privsep daemons were started through sudo with the agent's configuration file.
	killByCommandLine("--config-file " + l.AgentINI())
}

// ProxyPID returns the pid of the network's haproxy as the agent's pid file names it (0 if there
// is none), and whether that process is alive and a haproxy of that network.
func (l *Lab) ProxyPID(networkID string) (int, bool) {
	b, err := os.ReadFile(l.ProxyPidFile(networkID))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return pid, err == nil && alive(pid) && strings.Contains(string(cmdline), "haproxy") && strings.Contains(string(cmdline), networkID)
}

// Alive reports whether pid runs (and is not a zombie).
func Alive(pid int) bool { return alive(pid) }

// Signal sends sig to pid (e.g. SIGUSR1: haproxy's soft stop).
func Signal(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }
