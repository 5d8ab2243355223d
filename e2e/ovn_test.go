//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/clients"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/ovnlab"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
	"github.com/metaproxy/metaproxy/pkg/listen/listentest"
	"github.com/metaproxy/metaproxy/pkg/ovnchassis"
)

// ovnEnv is the ML2/OVN suite's environment: the lab (OVS, OVN, neutron ML2/OVN, nova), the
// recorder in front of nova, and metaproxy on the chassis: cmd/extproc, `xds chassis`, cmd/xds
// following the host's namespaces, and the data plane.
type ovnEnv struct {
	t        *testing.T
	dir, bin string
	lab      *ovnlab.Lab
	recorder *novaRecorder
	ini      string
	sock     string

	extproc, xds, chassis, dataplane     *proc
	extprocAdmin, chassisAdmin, xdsAdmin string
	dpAdmin, xdsAddr                     string
	pki                                  *labPKI

	nets map[string]ovnlab.Network
	vms  map[string]*ovnVM
}

// ovnVM is a VM of the lab in the shape the shared helpers (ownMetadata, the load) take.
type ovnVM struct {
	*vm
	lab *ovnlab.VM
}

// agentDownTime is neutron's agent_down_time in the OVN suite: short, so that a stopped agent is
// shown dead within the test's patience (75 s in production).
const agentDownTime = 10 * time.Second

// newOVNEnv starts the lab and builds the binaries; nothing of metaproxy runs yet.
func newOVNEnv(t *testing.T, ctx context.Context) *ovnEnv {
	t.Helper()
	if err := ovnlab.Available(); err != nil {
		t.Skipf("the ML2/OVN suite cannot run here: %v", err)
	}
	e := &ovnEnv{t: t, dir: t.TempDir(), nets: map[string]ovnlab.Network{}, vms: map[string]*ovnVM{}}
	e.bin = filepath.Join(e.dir, "bin")
	buildBinaries(t, e.bin)
	t0 := time.Now()
	// Nova's cache on (its production default, 15 s): the load scenarios measure the path, not
	// nova building metadata afresh for every request.
	lab, err := ovnlab.Start(ctx, ovnlab.Options{BaseDir: filepath.Join(e.dir, "lab"), SharedSecret: e2eSecret,
		AgentDownTime: agentDownTime, NovaCacheExpiration: 15 * time.Second, StopGrace: 5 * time.Second, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	e.lab = lab
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("OVN lab logs:\n%s", lab.Logs())
		}
		if err := lab.Close(); err != nil {
			t.Errorf("close the lab: %v", err)
		}
	})
	t.Logf("OVN lab up in %s", time.Since(t0).Round(100*time.Millisecond))
	host, port := lab.Cloud().NovaHostPort()
	e.recorder = startRecorder(t, fmt.Sprintf("%s:%d", host, port))
	e.ini = filepath.Join(e.dir, "metadata_agent.ini")
	writeFile(t, e.ini, fmt.Sprintf("[DEFAULT]\nmetadata_proxy_shared_secret = %s\nnova_metadata_host = 127.0.0.1\nnova_metadata_port = %d\nnova_metadata_protocol = http\n", e2eSecret, e.recorder.port()))
	// The secure defaults, as in setup: cmd/extproc on a UNIX socket with the peer check, cmd/xds
	// over mutual TLS with the node's certificate, the data plane from `xds bootstrap`.
	e.sock = filepath.Join(listentest.SharedDir(t), "extproc.sock")
	e.pki = newLabPKI(t, e.dir, e.bin, nodeID)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{e.extproc, e.chassis, e.xds, e.dataplane} {
				if p != nil {
					t.Logf("---- %s log:\n%s", p.name, tail(p.logs(), 80))
				}
			}
		}
	})
	return e
}

func (e *ovnEnv) addNetwork(ctx context.Context, name string) ovnlab.Network {
	e.t.Helper()
	n, err := e.lab.CreateNetwork(ctx, name, "10.0.0.0/24")
	if err != nil {
		e.t.Fatal(err)
	}
	e.nets[name] = n
	return n
}

// addVM boots a VM on the chassis: its port bound to the chassis, DHCP from OVN.
func (e *ovnEnv) addVM(ctx context.Context, name, network, ip string) *ovnVM {
	e.t.Helper()
	v := &vm{key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + strings.Repeat(name, 8) + " " + name + "@e2e", userData: "#cloud-config\nhostname: " + name + "\n"}
	lvm, err := e.lab.CreateVM(ctx, e.nets[network], name, openstack.VMSpec{Hostname: "vm-" + name, IP: ip,
		UserData: []byte(v.userData), Metadata: map[string]string{"role": name}, PublicKeys: map[string]string{"key-" + name: v.key}})
	if err != nil {
		e.t.Fatal(err)
	}
	v.os, v.ns = lvm.VM, &vmnet.VM{Name: name, Namespace: lvm.Namespace, Interface: "eth0", IP: lvm.IP, MAC: lvm.MAC}
	ov := &ovnVM{vm: v, lab: lvm}
	e.vms[name] = ov
	return ov
}

// startExtproc starts cmd/extproc as on any node: the operator's ini, a noauth Neutron URL.
func (e *ovnEnv) startExtproc(t *testing.T) {
	t.Helper()
	e.extprocAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.extproc = startProc(t, e.dir, "extproc", nil, filepath.Join(e.bin, "extproc"), "--listen", "unix://"+e.sock,
		"--admin-listen", e.extprocAdmin, "--neutron-url", e.lab.Cloud().NeutronURL(), "--metadata-agent-ini", e.ini, "--log-format", "json")
	eventually(t, 30*time.Second, "extproc ready", func() error { return ready("http://" + e.extprocAdmin + "/readyz") })
}

// chassisArgs is `xds chassis` as deploy/systemd runs it, on the lab's databases. The Southbound
// database comes from Open_vSwitch external_ids:ovn-remote, the chassis and host names from
// system-id and hostname, as on a real chassis.
func (e *ovnEnv) chassisArgs() []string {
	if e.chassisAdmin == "" {
		e.chassisAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(e.t))
	}
	return []string{filepath.Join(e.bin, "xds"), "chassis", "--neutron-url", e.lab.Cloud().NeutronURL(),
		"--ovsdb-connection", e.lab.OVSDB(), "--interval", "1s", "--report-interval", "1s",
		"--admin-listen", e.chassisAdmin, "--log-format", "json"}
}

func (e *ovnEnv) startChassis(t *testing.T) {
	t.Helper()
	if e.chassis == nil {
		e.chassis = startProc(t, e.dir, "chassis", nil, e.chassisArgs()...)
	} else if err := e.chassis.start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "xds chassis ready", func() error { return ready("http://" + e.chassisAdmin + "/readyz") })
}

// startXDS starts cmd/xds following this host's namespaces (the ovnmeta- ones), as deploy/systemd
// runs it on a chassis; source replaces the source flags.
func (e *ovnEnv) startXDS(t *testing.T, source ...string) {
	t.Helper()
	if len(source) == 0 {
		source = []string{"--source", "netns", "--netns-dir", "/run/netns"}
	}
	if e.xdsAddr == "" {
		e.xdsAddr, e.xdsAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	argv := append([]string{filepath.Join(e.bin, "xds"), "--listen", e.xdsAddr, "--admin-listen", e.xdsAdmin,
		"--node-id", nodeID, "--metadata-agent-ini", e.ini, "--extproc-address", "unix://" + e.sock, "--poll-interval", "1s"}, e.pki.xdsArgs()...)
	argv = append(argv, source...)
	if e.xds == nil {
		e.xds = startProc(t, e.dir, "xds", nil, argv...)
	} else {
		e.xds.argv = argv
		if err := e.xds.start(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "xds ready", func() error { return ready("http://" + e.xdsAdmin + "/readyz") })
}

// startDataplane starts the stand-in (or Envoy with ENVOY_BIN) on the bootstrap `xds bootstrap`
// writes for the node.
func (e *ovnEnv) startDataplane(t *testing.T) {
	t.Helper()
	dpAdminPort := freePort(t)
	e.dpAdmin = fmt.Sprintf("127.0.0.1:%d", dpAdminPort)
	e.dataplane = startDataPlane(t, e.dir, e.bin, e.pki, e.xdsAddr, dpAdminPort)
	eventually(t, 30*time.Second, "the data plane took its configuration", func() error { return ready("http://" + e.dpAdmin + "/ready") })
}

// waitListener waits until the data plane has (or no longer has) the network's listener.
func (e *ovnEnv) waitListener(t *testing.T, n ovnlab.Network, present bool) {
	t.Helper()
	ln := listenerName(n.Network)
	waitListeners(t, e.dpAdmin, 30*time.Second, fmt.Sprintf("listener of %s present=%v", n.Name, present), func(names string) bool {
		return strings.Contains(names, ln) == present
	})
}

// chassisPasses reads how many reconcile passes `xds chassis` made (its /metrics).
func (e *ovnEnv) chassisPasses(t *testing.T) int {
	t.Helper()
	_, body, err := httpGet("http://" + e.chassisAdmin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + ovnchassis.MetricPasses + `(?:\{[^}]*\})? (\d+)`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in the chassis metrics:\n%s", ovnchassis.MetricPasses, body)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitPasses waits until `xds chassis` made n more passes, so that a state it would change has
// been seen by it (an absence is then a decision, not a delay).
func (e *ovnEnv) waitPasses(t *testing.T, n int) {
	t.Helper()
	from := e.chassisPasses(t)
	eventually(t, 30*time.Second, fmt.Sprintf("%d more chassis passes", n), func() error {
		if got := e.chassisPasses(t); got < from+n {
			return fmt.Errorf("%d passes, want %d", got, from+n)
		}
		return nil
	})
}

// namespaceInode identifies a namespace instance: a recreated namespace has another inode.
func namespaceInode(t *testing.T, ns string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(vmnet.NamespacePath(ns), &st); err != nil {
		t.Fatalf("namespace %s: %v", ns, err)
	}
	return st.Ino
}

// metadataAgent is the row Neutron shows for the chassis's OVN Metadata agent.
func (e *ovnEnv) metadataAgent(ctx context.Context) (ovnlab.Agent, error) {
	agents, err := e.lab.Agents(ctx)
	if err != nil {
		return ovnlab.Agent{}, err
	}
	for _, a := range agents {
		if a.Binary == "neutron-ovn-metadata-agent" && a.Host == e.lab.Chassis() {
			return a, nil
		}
	}
	return ovnlab.Agent{}, fmt.Errorf("no OVN Metadata agent of %s in %+v", e.lab.Chassis(), agents)
}

func (e *ovnEnv) vmList(names ...string) []*vm {
	var out []*vm
	for _, n := range names {
		out = append(out, e.vms[n].vm)
	}
	return out
}

// TestOVNMetadataPath runs metaproxy on an ML2/OVN chassis, neutron-ovn-metadata-agent's place: VMs
// that got their address from OVN's DHCP reach 169.254.169.254 through OVN (the route to the
// metadata port), the data plane's listener in ovnmeta-<network> (made by `xds chassis`), cmd/extproc
// and the real nova.
func TestOVNMetadataPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := newOVNEnv(t, ctx)
	// Two networks with the same CIDR; two VMs on the first, one on the second with the same address.
	e.addNetwork(ctx, "ovn-a")
	e.addNetwork(ctx, "ovn-b")
	e.addVM(ctx, "a1", "ovn-a", "10.0.0.5")
	e.addVM(ctx, "a2", "ovn-a", "10.0.0.6")
	e.addVM(ctx, "b1", "ovn-b", "10.0.0.5")
	e.startExtproc(t)
	e.startChassis(t)
	e.startXDS(t)
	e.startDataplane(t)
	e.waitListener(t, e.nets["ovn-a"], true)
	e.waitListener(t, e.nets["ovn-b"], true)

	t.Run("1_each_VM_gets_its_own_metadata_on_overlapping_networks", func(t *testing.T) {
		for _, name := range []string{"a1", "a2", "b1"} {
			v := e.vms[name]
			ownMetadata(t, v.vm, curlVM(t, v.vm, "GET", "/openstack/latest/meta_data.json", nil, nil))
			if r := curlVM(t, v.vm, "GET", "/openstack/latest/user_data", nil, nil); r.Status != 200 || string(r.Body) != v.userData {
				t.Errorf("%s user_data: %d %q", name, r.Status, r.Body)
			}
			if r := curlVM(t, v.vm, "GET", "/latest/meta-data/hostname", nil, nil); r.Status != 200 || !strings.HasPrefix(string(r.Body), "vm-"+name) {
				t.Errorf("%s EC2 hostname: %d %q", name, r.Status, r.Body)
			}
			if r := curlVM(t, v.vm, "GET", "/openstack/latest/meta_data.json", nil, nil); r.Header.Get("Server") != "envoy" {
				t.Errorf("%s: the answer did not come from the data plane (Server %q)", name, r.Header.Get("Server"))
			}
		}
		// The namespaces are the agent's: the metadata port's MAC and address, 169.254.169.254, the
		// host end on br-int as the metadata port.
		for _, name := range []string{"ovn-a", "ovn-b"} {
			n := e.nets[name]
			out, err := vmnet.Command(ctx, n.Namespace(), "ip", "-o", "addr", "show").CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", n.Namespace(), err, out)
			}
			for _, want := range []string{"inet " + n.MetadataIP + "/24", "inet 169.254.169.254/32", "link/ether " + n.MetadataMAC} {
				if !strings.Contains(string(out)+linkLines(ctx, n.Namespace()), want) {
					t.Errorf("%s lacks %q:\n%s", n.Namespace(), want, out)
				}
			}
			iface := "tap" + n.ID[:10] + "0"
			if id, err := e.lab.VSCtl(ctx, "get", "Interface", iface, "external_ids:iface-id"); err != nil || strings.Trim(strings.TrimSpace(id), `"`) != n.MetadataPortID {
				t.Errorf("%s iface-id %q (%v), want the metadata port %s", iface, id, err, n.MetadataPortID)
			}
		}
	})

	t.Run("2_cloud-init_reads_its_metadata", func(t *testing.T) {
		for _, name := range []string{"a1", "b1"} {
			cloudInitReadsOwn(t, ctx, e.vms[name].vm)
		}
	})

	t.Run("3_forged_identity_headers_are_ignored", func(t *testing.T) {
		// X-OVN-Network-ID among them: the OVN agent's own header, which its Zed haproxy does not
		// remove (it adds the right value after the VM's).
		a1 := e.vms["a1"]
		ownMetadata(t, a1.vm, curlVM(t, a1.vm, "GET", "/openstack/latest/meta_data.json", forgedIdentity(e.vms["b1"].vm, e.nets["ovn-b"].ID), nil))
	})

	t.Run("4_a_VM_bound_later_gets_its_namespace_and_the_last_to_leave_takes_it_away", func(t *testing.T) {
		c := e.addNetwork(ctx, "ovn-c")
		e.waitPasses(t, 2)
		if _, err := os.Stat(vmnet.NamespacePath(c.Namespace())); err == nil {
			t.Fatalf("%s exists with no VM of the network on the chassis", c.Namespace())
		}
		l := startVMLoad(t, e.vmList("a1", "b1"), 1, 50*time.Millisecond)
		c1 := e.addVM(ctx, "c1", "ovn-c", "10.0.0.5")
		e.waitListener(t, c, true)
		eventually(t, 30*time.Second, "c1 gets its metadata", func() error {
			r, err := clients.Curl(ctx, c1.ns, "GET", "/openstack/latest/meta_data.json", nil, nil)
			if err != nil || r.Status != 200 {
				return fmt.Errorf("%v %d %s", err, r.Status, r.Body)
			}
			return nil
		})
		ownMetadata(t, c1.vm, curlVM(t, c1.vm, "GET", "/openstack/latest/meta_data.json", nil, nil))
		c2 := e.addVM(ctx, "c2", "ovn-c", "10.0.0.6")
		ino := namespaceInode(t, c.Namespace())
		if err := e.lab.DeleteVM(ctx, c1.lab); err != nil {
			t.Fatal(err)
		}
		e.waitPasses(t, 2)
		if got := namespaceInode(t, c.Namespace()); got != ino {
			t.Errorf("%s was recreated while c2 stayed", c.Namespace())
		}
		ownMetadata(t, c2.vm, curlVM(t, c2.vm, "GET", "/openstack/latest/meta_data.json", nil, nil))
		if err := e.lab.DeleteVM(ctx, c2.lab); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the namespace goes with the last VM", func() error {
			if _, err := os.Stat(vmnet.NamespacePath(c.Namespace())); err == nil {
				return fmt.Errorf("%s still there", c.Namespace())
			}
			return nil
		})
		e.waitListener(t, c, false)
		if out, err := e.lab.VSCtl(ctx, "list-ports", ovnlab.Bridge); err != nil || strings.Contains(out, "tap"+c.ID[:10]+"0") {
			t.Errorf("the metadata port's OVS port is still on br-int: %v\n%s", err, out)
		}
		res := l.stop()
		res.assertNoFailures(t)
		t.Logf("%d requests from a1 and b1 meanwhile, none failed", res.total())
	})

	t.Run("5_chassis_restarted_under_load", func(t *testing.T) {
		inodes := map[string]uint64{}
		for _, name := range []string{"ovn-a", "ovn-b"} {
			inodes[name] = namespaceInode(t, e.nets[name].Namespace())
		}
		l := startVMLoad(t, e.vmList("a1", "a2", "b1"), 2, 25*time.Millisecond)
		time.Sleep(2 * time.Second)
		e.chassis.stop()
		stoppedAt := time.Now()
		time.Sleep(2 * time.Second)
		e.startChassis(t)
		before := e.chassisPasses(t)
		eventually(t, 30*time.Second, "passes after the restart", func() error {
			if e.chassisPasses(t) < before+2 {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		res := l.stop()
		res.assertNoFailures(t)
		if n := res.countSince(true, stoppedAt, true); n < 20 {
			t.Errorf("only %d requests after the chassis was stopped", n)
		}
		for name, ino := range inodes {
			if got := namespaceInode(t, e.nets[name].Namespace()); got != ino {
				t.Errorf("%s was recreated by the restart", name)
			}
		}
		// Adopting its own namespaces changed nothing (the log says what a pass changes).
		log := e.chassis.logs()
		restart := log[strings.LastIndex(log, "---- start"):]
		for _, change := range []string{"created namespace", "created veth", "set MAC", "added an address", "removed an address", "plugged into"} {
			if strings.Contains(restart, change) {
				t.Errorf("the restarted chassis changed a working namespace (%q):\n%s", change, tail(restart, 30))
			}
		}
		t.Logf("%d requests in %s across the restart, none failed", res.total(), res.duration().Round(time.Millisecond))
	})

	t.Run("6_the_agent_list_stays_true", func(t *testing.T) {
		// Running: the chassis's OVN Metadata agent is alive, with the agent's own id, and says
		// it is metaproxy. Stays alive past agent_down_time (it answers every nb_cfg bump). The
		// chassis was just restarted (subtest 5): Neutron may show it alive only once it has
		// answered the nb_cfg of the latest listing, within a report interval.
		eventually(t, agentDownTime, "the restarted chassis's agent is alive", func() error {
			a, err := e.metadataAgent(ctx)
			if err != nil || !a.Alive {
				return fmt.Errorf("%+v %v", a, err)
			}
			return nil
		})
		deadline := time.Now().Add(agentDownTime + 5*time.Second)
		for time.Now().Before(deadline) {
			a, err := e.metadataAgent(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !a.Alive || a.ID != ovnchassis.AgentID(e.lab.Chassis()) || !strings.Contains(a.Description, "metaproxy") {
				t.Fatalf("agent while xds chassis runs: %+v", a)
			}
			time.Sleep(time.Second)
		}
		e.chassis.stop()
		eventually(t, 3*agentDownTime, "the agent is shown dead once xds chassis stopped", func() error {
			a, err := e.metadataAgent(ctx)
			if err != nil || a.Alive {
				return fmt.Errorf("%+v %v", a, err)
			}
			return nil
		})
		e.startChassis(t)
		eventually(t, 3*agentDownTime, "the agent is alive again", func() error {
			a, err := e.metadataAgent(ctx)
			if err != nil || !a.Alive {
				return fmt.Errorf("%+v %v", a, err)
			}
			return nil
		})
		// Meanwhile the VMs kept their metadata: the namespaces stayed.
		ownMetadata(t, e.vms["a2"].vm, curlVM(t, e.vms["a2"].vm, "GET", "/openstack/latest/meta_data.json", nil, nil))
	})

	t.Run("nova_never_received_an_unsigned_request", func(t *testing.T) {
		all := e.recorder.all()
		if len(all) == 0 {
			t.Fatal("the recorder saw no request at all")
		}
		if bad := e.recorder.unsigned(); len(bad) > 0 {
			t.Fatalf("%d of %d requests reached nova without exactly one signed identity: %+v", len(bad), len(all), bad)
		}
		t.Logf("%d requests reached nova, every one signed", len(all))
	})
}

// linkLines returns `ip -o link show` of namespace ns (the MAC is on the link line).
func linkLines(ctx context.Context, ns string) string {
	out, _ := vmnet.Command(ctx, ns, "ip", "-o", "link", "show").CombinedOutput()
	return string(out)
}
