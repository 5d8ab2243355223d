//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/ovnlab"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// TestOVNMigrationFromAgent performs the ML2/OVN section of docs/migrate-from-neutron-metadata-agent.md
// on a chassis, step by step and in the guide's order, against the real neutron-ovn-metadata-agent
// (its haproxy in each ovnmeta- namespace, its process monitor checking them): metaproxy's
// listeners join the agent's haproxies, the haproxies are held and soft-stopped, `xds chassis`
// takes the namespaces over and the agent stops; then the way back. VMs ask for their metadata all
// along, and not one request may fail.
func TestOVNMigrationFromAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := newOVNEnv(t, ctx)
	e.addNetwork(ctx, "ovn-m1")
	e.addNetwork(ctx, "ovn-m2")
	e.addVM(ctx, "m1", "ovn-m1", "10.0.0.5")
	e.addVM(ctx, "m2", "ovn-m2", "10.0.0.5")
	e.addVM(ctx, "m3", "ovn-m1", "10.0.0.6")
	if err := e.lab.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.lab.StopAgent)
	nets := []ovnlab.Network{e.nets["ovn-m1"], e.nets["ovn-m2"]}
	vms := e.vmList("m1", "m2", "m3")

	if !t.Run("0_the_agent_serves", func(t *testing.T) {
		for _, n := range nets {
			eventually(t, 60*time.Second, "the agent's haproxy in "+n.Namespace(), func() error {
				if _, err := os.Stat(vmnet.NamespacePath(n.Namespace())); err != nil {
					return err
				}
				if got := listenersOn80(t, n.Namespace()); len(got) != 1 || got[0] != "haproxy" {
					return fmt.Errorf("listeners: %v", got)
				}
				return nil
			})
		}
		for _, v := range vms {
			eventually(t, 30*time.Second, v.ns.Name+" served by the agent", func() error {
				r := curlVM(t, v, "GET", "/openstack/latest/meta_data.json", nil, nil)
				if r.Status != 200 {
					return fmt.Errorf("%d %s", r.Status, r.Body)
				}
				return nil
			})
			r := curlVM(t, v, "GET", "/openstack/latest/meta_data.json", nil, nil)
			ownMetadata(t, v, r)
			if r.Header.Get("Server") == "envoy" {
				t.Fatalf("before the migration %s was answered by the data plane", v.ns.Name)
			}
		}
	}) {
		return
	}

	// Guide, OVN section, step 1: metaproxy beside the agent; its listeners join the haproxies.
	e.startExtproc(t)
	e.startXDS(t)
	e.startDataplane(t)
	if !t.Run("guide_ovn_1_listeners_beside_the_agents_haproxies", func(t *testing.T) {
		for _, n := range nets {
			e.waitListener(t, n, true)
			bothListen(t, n.Namespace(), e.dataplane.name, e.dpAdmin)
		}
	}) {
		return
	}

	// Step 2: both answer, every answer the VM's own.
	if !t.Run("guide_ovn_2_both_proxies_answer", func(t *testing.T) {
		bothAnswer(t, vms)
	}) {
		return
	}

	// Steps 3 and 4, under load: hold and soft-stop the haproxies, `xds chassis` takes over, the
	// agent stops.
	holders := map[string]*proc{}
	if !t.Run("guide_ovn_3_4_haproxies_held_and_soft_stopped_agent_replaced_under_load", func(t *testing.T) {
		recorderBefore := len(e.recorder.all())
		l := startVMLoad(t, vms, 2, 25*time.Millisecond)
		l.waitBoth(t, 10, 30*time.Second)
		slow := startSlowRequests(t, vms, 4)
		var stopped []int
		for _, n := range nets {
			old, ok := e.lab.ProxyPID(n.ID)
			if !ok {
				t.Fatalf("no haproxy of the agent for %s", n.Name)
			}
			// The agent's process monitor sees "its" proxy alive in the holder: a process whose
			// command line names the network (neutron/agent/linux/external_process.py, active).
			holders[n.ID] = startProc(t, e.dir, "holder-"+n.Name, nil, "bash", "-c", "exec -a metaproxy-holds-metadata-"+n.ID+" sleep infinity")
			eventually(t, 5*time.Second, "the holder runs", func() error {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", holders[n.ID].cmd.Process.Pid))
				if err != nil || !strings.Contains(string(b), n.ID) {
					return fmt.Errorf("cmdline %q %v", b, err)
				}
				return nil
			})
			pidf := e.lab.ProxyPidFile(n.ID)
			writeFile(t, pidf+".new", strconv.Itoa(holders[n.ID].cmd.Process.Pid)+"\n")
			if err := os.Rename(pidf+".new", pidf); err != nil {
				t.Fatal(err)
			}
			if out, err := vmnet.Command(ctx, n.Namespace(), "sysctl", "-w", "net.ipv4.tcp_migrate_req=1").CombinedOutput(); err != nil {
				t.Logf("tcp_migrate_req not available (%v: %s): relying on the soft stop alone", err, out)
			}
			if err := ovnlab.Signal(old, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			stopped = append(stopped, old)
		}
		slowVia := slow.finish(t)
		for _, pid := range stopped {
			eventually(t, 45*time.Second, "haproxy exits after its soft stop", func() error {
				if ovnlab.Alive(pid) {
					return fmt.Errorf("haproxy %d still runs", pid)
				}
				return nil
			})
		}
		exitedAt := time.Now()
		// `xds chassis` adopts the agent's namespaces, then the agent stops (the holders with it).
		e.startChassis(t)
		e.lab.StopAgent()
		agentStoppedAt := time.Now()
		for _, h := range holders {
			h.stop()
		}
		// Let the load run well past the agent's end, and past two of its monitor's checks (2 s
		// here) before that: nothing may have respawned a haproxy.
		time.Sleep(time.Until(agentStoppedAt.Add(4 * time.Second)))
		res := l.stop()
		t.Logf("load: %d requests in %s (%d via haproxy, %d via metaproxy); %d of %d requests in flight at the soft stops went through haproxy",
			res.total(), res.duration().Round(time.Millisecond), res.count(false), res.count(true), slowVia[false], slowVia[false]+slowVia[true])
		res.assertNoFailures(t)
		res.assertSwitched(t, exitedAt, true)
		if n := res.countSince(true, agentStoppedAt, true); n < 20 {
			t.Errorf("only %d requests after the agent stopped", n)
		}
		if got, want := len(e.recorder.all())-recorderBefore, res.count(true)+slowVia[true]; got != want {
			t.Errorf("%d requests reached nova through metaproxy, the VMs got %d answers via metaproxy", got, want)
		}
		for _, n := range nets {
			if got := listenersOn80(t, n.Namespace()); len(got) != 1 || got[0] != e.dataplane.name {
				t.Errorf("listeners in %s after the switch: %v, want the data plane alone", n.Namespace(), got)
			}
		}
		// The adoption changed nothing in the agent's namespaces.
		for _, change := range []string{"created namespace", "created veth", "set MAC", "added an address", "removed an address", "plugged into", "removed namespace"} {
			if strings.Contains(e.chassis.logs(), change) {
				t.Errorf("xds chassis changed the agent's namespaces (%q):\n%s", change, tail(e.chassis.logs(), 30))
			}
		}
		// Neutron shows the chassis's OVN Metadata agent alive, now metaproxy.
		eventually(t, 3*agentDownTime, "the agent list names metaproxy", func() error {
			a, err := e.metadataAgent(ctx)
			if err != nil || !a.Alive || !strings.Contains(a.Description, "metaproxy") {
				return fmt.Errorf("%+v %v", a, err)
			}
			return nil
		})
	}) {
		return
	}

	// The way back, under load: the agent returns (it adopts the namespaces and starts haproxy
	// beside the data plane), `xds chassis` stops, cmd/xds gives the node no listener any more.
	t.Run("guide_ovn_rollback_under_load", func(t *testing.T) {
		l := startVMLoad(t, vms, 2, 25*time.Millisecond)
		time.Sleep(2 * time.Second)
		if err := e.lab.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		for _, n := range nets {
			eventually(t, 60*time.Second, "the agent's haproxy beside the data plane in "+n.Namespace(), func() error {
				got := listenersOn80(t, n.Namespace())
				if len(got) != 2 || !contains(got, "haproxy") {
					return fmt.Errorf("listeners: %v", got)
				}
				return nil
			})
		}
		l.waitBoth(t, 10, 30*time.Second)
		e.chassis.stop()
		empty := filepath.Join(e.dir, "no-networks.yaml")
		writeFile(t, empty, fmt.Sprintf("nodes:\n  %s: []\n", nodeID))
		e.xds.stop()
		e.startXDS(t, "--source", "file", "--networks-file", empty)
		for _, n := range nets {
			e.waitListener(t, n, false)
		}
		removedAt := time.Now()
		time.Sleep(3 * time.Second)
		res := l.stop()
		t.Logf("load: %d requests in %s (%d via haproxy, %d via metaproxy)", res.total(), res.duration().Round(time.Millisecond), res.count(false), res.count(true))
		res.assertNoFailures(t)
		res.assertSwitched(t, removedAt, false)
		for _, n := range nets {
			if got := listenersOn80(t, n.Namespace()); len(got) != 1 || got[0] != "haproxy" {
				t.Errorf("listeners in %s after the rollback: %v, want haproxy alone", n.Namespace(), got)
			}
		}
	})

	t.Run("nova_never_received_an_unsigned_request_from_metaproxy", func(t *testing.T) {
		if bad := e.recorder.unsigned(); len(bad) > 0 {
			t.Fatalf("%d requests reached nova without exactly one signed identity: %+v", len(bad), bad)
		}
	})
}
