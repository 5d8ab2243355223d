//go:build e2e

package ovnlab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/clients"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// TestLabWithTheRealAgent is the fixture's own proof, the recipe's milestones: the chassis
// registers, a VM bound to it gets its address and the metadata route from OVN's DHCP, and the real
// neutron-ovn-metadata-agent serves it its own metadata from nova through ovnmeta's haproxy. When
// the lab closes nothing of it is left on the host.
func TestLabWithTheRealAgent(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("the OVN lab cannot run here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	base := filepath.Join(t.TempDir(), "lab")
	l, err := Start(ctx, Options{BaseDir: base, SharedSecret: "lab-secret", Logf: t.Logf, StopGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab logs:\n%s", l.Logs())
		}
		if !closed {
			l.Close()
		}
	})
	n, err := l.CreateNetwork(ctx, "net1", "10.0.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := l.CreateVM(ctx, n, "vm1", openstack.VMSpec{Hostname: "vm1", IP: "10.0.0.5"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	var md struct {
		UUID string `json:"uuid"`
	}
	err = waitFor(ctx, 60*time.Second, "metadata through the agent", nil, func() error {
		r, err := clients.Curl(ctx, &vmnet.VM{Namespace: vm.Namespace}, "GET", "/openstack/latest/meta_data.json", nil, nil)
		if err != nil {
			return err
		}
		if r.Status != 200 {
			return fmt.Errorf("HTTP %d: %s", r.Status, strings.TrimSpace(string(r.Body)))
		}
		return json.Unmarshal(r.Body, &md)
	})
	if err != nil {
		t.Fatal(err)
	}
	if md.UUID != vm.InstanceID {
		t.Errorf("uuid %q, want %q", md.UUID, vm.InstanceID)
	}
	// The VMs' traffic goes through no conntrack (see CreateVM).
	if out, err := l.tool(ctx, "ovs-appctl", "-t", l.path("run/ovs-vswitchd.ctl"), "dpctl/dump-conntrack"); err != nil || strings.Contains(out, "tcp,") {
		t.Errorf("connections in OVS's conntrack (%v):\n%s", err, out)
	}
	if pid, ok := l.ProxyPID(n.ID); !ok {
		t.Errorf("no haproxy of the agent for %s (pid file says %d)", n.ID, pid)
	}
	// The agent registers in Chassis_Private after its first sync; neutron lists it alive then.
	err = waitFor(ctx, 30*time.Second, "the OVN metadata agent listed alive", nil, func() error {
		agents, err := l.Agents(ctx)
		if err != nil {
			return err
		}
		for _, a := range agents {
			if a.Binary == "neutron-ovn-metadata-agent" && a.Host == l.Chassis() && a.Alive {
				return nil
			}
		}
		return fmt.Errorf("agents: %+v", agents)
	})
	if err != nil {
		t.Error(err)
	}

	if err := l.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	closed = true
	// Another test binary's lab may start as soon as this one released the host: look at the
	// host's fixed names (br-int, the datapath's tap) only while holding it again.
	lock, err := lockHost(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	for _, ns := range []string{vm.Namespace, n.Namespace()} {
		if _, err := os.Stat(vmnet.NamespacePath(ns)); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	if killByCommandLine(base+"/") != 0 {
		t.Error("processes of the lab were still running after Close")
	}
	if len(liveProcesses("ovs-vswitchd")) != 0 {
		t.Error("ovs-vswitchd still runs")
	}
	for _, dev := range []string{"br-int", "ovs-netdev", "ovo-vm1"} {
		if _, err := os.Stat("/sys/class/net/" + dev); err == nil {
			t.Errorf("device %s left behind", dev)
		}
	}
}
