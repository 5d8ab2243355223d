package ovnmeta_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/metaproxy/metaproxy/pkg/ovnmeta"
	"github.com/metaproxy/metaproxy/pkg/ovsctl"
	"github.com/metaproxy/metaproxy/pkg/ovsctl/ovsctltest"
)

const netnsDir = "/run/netns"

func newUUID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func sh(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// lab is a provisioner on a real (vswitchd-less) Open_vSwitch database with br-int on the netdev
// datapath and a second bridge, working on the host's /run/netns. It skips unless root with
// iproute2, iptables and the OVS tools.
type lab struct {
	ovs *ovsctl.OVS
	db  string
	p   *ovnmeta.Provisioner
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: namespaces and veths need root (CI runs this test as root)")
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: %s not installed", bin)
		}
	}
	db := ovsctltest.OpenVSwitch(t)
	ovsctltest.Run(t, "ovs-vsctl", "--db="+db, "--no-wait", "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev")
	ovsctltest.Run(t, "ovs-vsctl", "--db="+db, "--no-wait", "add-br", "br-ex")
	o := ovsctl.NewOVS(ovsctl.OVSOptions{DB: db})
	p, err := ovnmeta.NewProvisioner(ovnmeta.Options{NetnsDir: netnsDir, Bridge: "br-int", Switch: o,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return &lab{ovs: o, db: db, p: p}
}

// network returns a network with a fresh id whose namespace and veth are removed when the test ends.
func (l *lab) network(t *testing.T, addrs ...string) ovnmeta.Network {
	t.Helper()
	n := ovnmeta.Network{ID: newUUID(t), PortID: newUUID(t), MAC: net.HardwareAddr{0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56}}
	for _, a := range addrs {
		n.Addresses = append(n.Addresses, netip.MustParsePrefix(a))
	}
	host, _ := ovnmeta.VethNames(n.ID)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", host).Run()
		exec.Command("ip", "netns", "delete", ovnmeta.NamespaceName(n.ID)).Run()
	})
	return n
}

func (l *lab) ensure(t *testing.T, n ovnmeta.Network) bool {
	t.Helper()
	st, err := l.ovs.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	changed, err := l.p.Ensure(context.Background(), st, n)
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

// check asserts the state the agent leaves: namespace, both veth ends up, the inner end with the
// MAC and exactly the IPv4 addresses, the port on br-int with the iface-id, the checksum rule.
func (l *lab) check(t *testing.T, n ovnmeta.Network) {
	t.Helper()
	ns := ovnmeta.NamespaceName(n.ID)
	host, inner := ovnmeta.VethNames(n.ID)
	if out := sh(t, "ip", "-o", "link", "show", host); !strings.Contains(out, ",UP") {
		t.Errorf("%s not up: %s", host, out)
	}
	out := sh(t, "ip", "-n", ns, "-o", "link", "show", inner)
	if !strings.Contains(out, ",UP") || !strings.Contains(out, "link/ether "+n.MAC.String()) {
		t.Errorf("%s in %s: %s, want up with %s", inner, ns, out, n.MAC)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(sh(t, "ip", "-n", ns, "-o", "addr", "show", "dev", inner)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && (f[2] == "inet" || (f[2] == "inet6" && !strings.HasPrefix(f[3], "fe80:"))) {
			got = append(got, f[3])
		}
	}
	want := []string{ovnmeta.MetadataCIDR}
	for _, a := range n.Addresses {
		want = append(want, a.String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("addresses of %s: %v, want %v", inner, got, want)
	}
	st, err := l.ovs.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := st.Ports[host]; p.Bridge != "br-int" || p.ExternalIDs["iface-id"] != n.PortID {
		t.Errorf("OVS port %s: %+v, want on br-int with iface-id %s", host, p, n.PortID)
	}
	if rules := sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "mangle", "-S", "POSTROUTING"); strings.Count(rules, "-j CHECKSUM --checksum-fill") != 1 {
		t.Errorf("checksum rule in %s: %s", ns, rules)
	}
}

func TestEnsureProvisionsLikeTheAgentAndIsIdempotent(t *testing.T) {
	l := newLab(t)
	n := l.network(t, "10.0.0.2/24", "192.168.7.3/28")
	if !l.ensure(t, n) {
		t.Error("the first Ensure reported no change")
	}
	l.check(t, n)
	if l.ensure(t, n) {
		t.Error("a second Ensure changed something")
	}
	l.check(t, n)
	ids, err := l.p.Namespaces()
	if err != nil || !slices.Contains(ids, n.ID) {
		t.Errorf("Namespaces() = %v, %v; want it to hold %s", ids, err, n.ID)
	}
}

func TestEnsureAdoptsTheAgentsNamespaceUntouched(t *testing.T) {
	l := newLab(t)
	n := l.network(t, "10.0.0.2/24")
	ns := ovnmeta.NamespaceName(n.ID)
	host, inner := ovnmeta.VethNames(n.ID)
	// What neutron-ovn-metadata-agent leaves (its IPv6 link-local removed, as it removes every
	// address it did not ask for).
	sh(t, "ip", "netns", "add", ns)
	sh(t, "ip", "link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns)
	sh(t, "ip", "-n", ns, "link", "set", inner, "address", n.MAC.String())
	sh(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf."+inner+".addr_gen_mode=1")
	sh(t, "ip", "link", "set", host, "up")
	sh(t, "ip", "-n", ns, "link", "set", inner, "up")
	sh(t, "ip", "-n", ns, "addr", "add", "10.0.0.2/24", "dev", inner)
	sh(t, "ip", "-n", ns, "addr", "add", ovnmeta.MetadataCIDR, "dev", inner)
	ovsctltest.Run(t, "ovs-vsctl", "--db="+l.db, "--no-wait", "add-port", "br-int", host, "--", "set", "Interface", host, "external_ids:iface-id="+n.PortID)
	sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-p", "tcp", "-m", "tcp", "-j", "CHECKSUM", "--checksum-fill")
	if l.ensure(t, n) {
		t.Error("Ensure changed a namespace that was already right")
	}
	l.check(t, n)
}

func TestEnsureRepairsDrift(t *testing.T) {
	l := newLab(t)
	n := l.network(t, "10.0.0.2/24")
	l.ensure(t, n)
	ns := ovnmeta.NamespaceName(n.ID)
	host, inner := ovnmeta.VethNames(n.ID)
	// A new subnet: the metadata port got a second address; and everything else knocked off.
	n.Addresses = append(n.Addresses, netip.MustParsePrefix("10.1.0.2/24"))
	sh(t, "ip", "-n", ns, "link", "set", inner, "down")
	sh(t, "ip", "-n", ns, "link", "set", inner, "address", "fa:16:3e:99:99:99")
	sh(t, "ip", "-n", ns, "addr", "add", "172.16.0.9/16", "dev", inner)
	sh(t, "ip", "-n", ns, "addr", "del", ovnmeta.MetadataCIDR, "dev", inner)
	ovsctltest.Run(t, "ovs-vsctl", "--db="+l.db, "--no-wait", "del-port", host, "--", "add-port", "br-ex", host)
	if !l.ensure(t, n) {
		t.Error("Ensure reported no change")
	}
	l.check(t, n)
}

func TestEnsureRemakesAPairWithoutItsInnerEnd(t *testing.T) {
	l := newLab(t)
	n := l.network(t, "10.0.0.2/24")
	host, _ := ovnmeta.VethNames(n.ID)
	// A host end left from an earlier pair whose namespace is gone (the agent deletes and remakes it).
	sh(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "stale"+n.ID[:5])
	if !l.ensure(t, n) {
		t.Error("Ensure reported no change")
	}
	l.check(t, n)
}

func TestRemove(t *testing.T) {
	l := newLab(t)
	n := l.network(t, "10.0.0.2/24")
	l.ensure(t, n)
	ctx := context.Background()
	if err := l.p.Remove(ctx, n.ID); err != nil {
		t.Fatal(err)
	}
	host, _ := ovnmeta.VethNames(n.ID)
	if _, err := os.Stat(ovnmeta.NamespacePath(netnsDir, n.ID)); !os.IsNotExist(err) {
		t.Errorf("namespace still there: %v", err)
	}
	if exec.Command("ip", "link", "show", host).Run() == nil {
		t.Errorf("%s still there", host)
	}
	st, err := l.ovs.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := st.Ports[host]; ok {
		t.Errorf("OVS port still there: %+v", p)
	}
	if err := l.p.Remove(ctx, n.ID); err != nil {
		t.Errorf("removing what is gone: %v", err)
	}

	// A namespace with a device that is not ours stays (the agent's garbage_collect_namespace).
	m := l.network(t, "10.0.0.2/24")
	l.ensure(t, m)
	ns := ovnmeta.NamespaceName(m.ID)
	sh(t, "ip", "-n", ns, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	if err := l.p.Remove(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ovnmeta.NamespacePath(netnsDir, m.ID)); err != nil {
		t.Errorf("a namespace holding someone else's device was removed: %v", err)
	}
}

func TestNamespacesListsOnlyOurs(t *testing.T) {
	l := newLab(t)
	id := newUUID(t)
	for _, name := range []string{"ovnmeta-" + id, "ovnmeta-not-a-uuid", "qdhcp-" + newUUID(t), "ovnmeta-" + strings.ToUpper(newUUID(t))} {
		sh(t, "ip", "netns", "add", name)
		t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	}
	ids, err := l.p.Namespaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range ids {
		if _, ok := ovnmeta.NetworkOf(ovnmeta.NamespaceName(got)); !ok {
			t.Errorf("Namespaces() returned %q", got)
		}
	}
	if !slices.Contains(ids, id) {
		t.Errorf("Namespaces() = %v, want %s in it", ids, id)
	}
	if err := l.p.Remove(context.Background(), "not-a-uuid"); err == nil {
		t.Error("Remove accepted a name that is not ours")
	}
}
