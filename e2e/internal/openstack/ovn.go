//go:build e2e

package openstack

import (
	"time"
)

// OVN points neutron-server at OVN's databases (ML2/OVN, `[ovn] ovn_metadata_enabled = True`), as
// the project's shared/openstack/ovn/real-ovn.sh recipe verified it: the ovn mechanism driver on geneve networks,
// the ovn-router service plugin, no RPC workers (nothing talks RPC to neutron-server), and
// neutron_sync_mode off. Networks then get no DHCP port (OVN answers DHCP); neutron creates each
// network's metadata port (device_owner network:distributed) itself. Package e2e/internal/ovnlab
// runs the OVN side.
type OVN struct {
	// NB and SB are the Northbound and Southbound database remotes, e.g. unix:/…/ovnnb_db.sock.
	NB, SB string
	// AgentDownTime is neutron's agent_down_time (how long an agent may go without reporting
	// before it is shown dead); zero: neutron's 75s.
	AgentDownTime time.Duration
}

// AgentDownSeconds is AgentDownTime in whole seconds for neutron.conf.
func (o *OVN) AgentDownSeconds() int {
	if o.AgentDownTime <= 0 {
		return 75
	}
	return int((o.AgentDownTime + time.Second - 1) / time.Second)
}

// Process is a long-running child started the way the cloud starts its own: in its own process
// group, killed with this test process (Pdeathsig), recorded so that the next Start kills it if
// this run could not (see ReapStale), its output appended to a log file.
type Process struct{ p *process }

// StartProcess starts argv as a Process named name, its output in logPath, with env added to this
// process's environment.
func StartProcess(name, logPath string, env []string, argv ...string) (*Process, error) {
	p, err := startProcess(name, logPath, env, argv...)
	if err != nil {
		return nil, err
	}
	return &Process{p: p}, nil
}

// Pid is the process's id (its process group's too).
func (p *Process) Pid() int { return p.p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) { return p.p.exited() }

// Stop sends SIGTERM to the process group, SIGKILL after grace, and waits for the leader.
func (p *Process) Stop(grace time.Duration) { p.p.stop(grace) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.p.done }

// ReapStale kills what earlier runs of the suite started and could not stop (see Start); it
// returns what it killed.
func ReapStale() []string { return reapStale() }
