package source

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

func uuid(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addNetns creates a named namespace with `ip netns add` and deletes it when the test ends. It
// skips the test when namespaces cannot be created here (not root, no ip, no CAP_SYS_ADMIN).
func addNetns(t *testing.T, name string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs this test as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: iproute2 `ip` not installed")
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create network namespace %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
}

func TestNamespaces(t *testing.T) {
	withV6, plain, router := uuid(t), uuid(t), uuid(t)
	addNetns(t, "qdhcp-"+withV6)
	addNetns(t, "qdhcp-"+plain)
	addNetns(t, "qrouter-"+router)
	// The DHCP port's tap device (a veth here) carries fe80::a9fe:a9fe, as neutron's DHCP agent sets it up.
	ip(t, "-n", "qdhcp-"+withV6, "link", "add", "tapmeta0", "type", "veth", "peer", "name", "tapmeta1")
	ip(t, "-n", "qdhcp-"+withV6, "link", "set", "tapmeta0", "up")
	ip(t, "-n", "qdhcp-"+withV6, "link", "set", "tapmeta1", "up")
	ip(t, "-n", "qdhcp-"+withV6, "addr", "add", "fe80::a9fe:a9fe/64", "dev", "tapmeta0", "nodad")

	for _, routers := range []bool{false, true} {
		t.Run(fmt.Sprintf("routers=%v", routers), func(t *testing.T) {
			src, err := NewNamespaces(DefaultNetnsDir, "node-1", routers, nil)
			if err != nil {
				t.Fatal(err)
			}
			nodes, err := src.Networks(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(nodes) != 1 {
				t.Fatalf("nodes = %v, want only node-1", nodes)
			}
			got := map[string]Network{}
			for _, n := range nodes["node-1"] {
				got[n.ID] = n // other tests' namespaces may be here too; look at ours only
			}
			want := map[string]Network{
				withV6: {Kind: resolve.KindNetwork, ID: withV6, NamespacePath: "/var/run/netns/qdhcp-" + withV6, Interface: "tapmeta0"},
				plain:  {Kind: resolve.KindNetwork, ID: plain, NamespacePath: "/var/run/netns/qdhcp-" + plain},
			}
			if routers {
				want[router] = Network{Kind: resolve.KindRouter, ID: router, NamespacePath: "/var/run/netns/qrouter-" + router}
			}
			for id, w := range want {
				if got[id] != w {
					t.Errorf("namespace %s: got %+v, want %+v", id, got[id], w)
				}
			}
			if _, ok := got[router]; ok && !routers {
				t.Errorf("router namespace listed with routers off")
			}
		})
	}
}

func TestNamespacesSkipsWhatIsNotANamespace(t *testing.T) {
	dir := t.TempDir()
	stale := uuid(t)
	for _, name := range []string{"qdhcp-" + stale, "qdhcp-not-a-uuid", "other"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src, err := NewNamespaces(dir, "node-1", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := src.Networks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := nodes["node-1"]; len(n) != 0 {
		t.Errorf("networks = %+v, want none (a plain file is not a namespace)", n)
	}
	if _, ok := nodes["node-1"]; !ok {
		t.Error("node-1 missing: a node without namespaces must still be reported")
	}

	missing, err := NewNamespaces(filepath.Join(dir, "absent"), "node-1", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if nodes, err := missing.Networks(t.Context()); err != nil || len(nodes["node-1"]) != 0 {
		t.Errorf("missing dir: %v, %v; want an empty node", nodes, err)
	}
}

// TestNeutronAllLocalNamespaces: on the one node of mode all, a network is served once its qdhcp
// namespace exists here, with the interface that holds fe80::a9fe:a9fe for its IPv6 listener.
func TestNeutronAllLocalNamespaces(t *testing.T) {
	addNetns(t, "qdhcp-"+netA)
	ip(t, "-n", "qdhcp-"+netA, "link", "add", "tapa0", "type", "veth", "peer", "name", "tapa1")
	ip(t, "-n", "qdhcp-"+netA, "link", "set", "tapa0", "up")
	ip(t, "-n", "qdhcp-"+netA, "link", "set", "tapa1", "up")
	ip(t, "-n", "qdhcp-"+netA, "addr", "add", "fe80::a9fe:a9fe/64", "dev", "tapa0", "nodad")
	src, err := NewNeutron(fakeNeutron(t, nil), NeutronOptions{Mode: ModeAll, NodeID: "lab", Networks: true, LocalNamespaces: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.Networks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := nw(netA)
	want.Interface = "tapa0"
	if len(got["lab"]) != 1 || got["lab"][0] != want {
		t.Fatalf("networks %+v; want only %+v (network B has no namespace here)", got["lab"], want)
	}
}

// TestRecreatedNamespaceGetsNewGeneration: a namespace deleted and created again at the same path
// (a new inode) changes Network.NamespaceGeneration, in the netns source and in mode all on the
// node; polls that find the same namespace keep it.
func TestRecreatedNamespaceGetsNewGeneration(t *testing.T) {
	id := netA // a network the fake Neutron lists, for mode all
	name := "qdhcp-" + id
	addNetns(t, name)
	netnsSrc, err := NewNamespaces(DefaultNetnsDir, "node-1", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	all, err := NewNeutron(fakeNeutron(t, nil), NeutronOptions{Mode: ModeAll, NodeID: "node-1", Networks: true, LocalNamespaces: true})
	if err != nil {
		t.Fatal(err)
	}
	for srcName, src := range map[string]Source{"netns": netnsSrc, "neutron all": all} {
		t.Run(srcName, func(t *testing.T) {
			gen := func() uint32 {
				t.Helper()
				nodes, err := src.Networks(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				for _, n := range nodes["node-1"] {
					if n.ID == id {
						return n.NamespaceGeneration
					}
				}
				t.Fatalf("namespace %s not found in %+v", name, nodes)
				return 0
			}
			first := gen()
			if again := gen(); again != first {
				t.Fatalf("same namespace: generation %d then %d", first, again)
			}
			ip(t, "netns", "delete", name)
			ip(t, "netns", "add", name)
			if recreated := gen(); recreated == first {
				t.Errorf("recreated namespace kept generation %d", first)
			}
		})
	}
}
