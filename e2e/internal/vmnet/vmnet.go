//go:build e2e

// Package vmnet builds, in network namespaces, what the DHCP agent and nova-compute leave on a
// hypervisor for the metadata path: one qdhcp-<network-id> namespace per network whose DHCP-side
// interface holds the DHCP port's address, 169.254.169.254/32 and fe80::a9fe:a9fe/64, and one
// namespace per VM joined to it by a veth pair, with the VM's fixed IP and MAC and a host route to
// 169.254.169.254 via the DHCP address.
//
// Layout (names are fixed so that listeners and tests can refer to them):
//
//	qdhcp-<network-id>:  bridge "tap-dhcp" (DHCP MAC; DHCP IP/prefix, 169.254.169.254/32,
//	                     fe80::a9fe:a9fe/64 nodad) + one "vif-<vm>" veth end per VM; lo up
//	vm-<name>:           "eth0" (port MAC, fixed IP/prefix, EUI-64 link-local without DAD);
//	                     169.254.169.254/32 via the DHCP IP; lo up
//
// Every namespace is recorded in a marker file before it is created, so Close (and, after a crash,
// the next New) deletes exactly what this suite made. Needs root and iproute2.
package vmnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Names of the interfaces the package creates.
const (
	// DHCPInterface is the bridge in each qdhcp namespace that holds the DHCP and metadata
	// addresses (the DHCP agent's tap device). IPv6 listeners on fe80::a9fe:a9fe use it as zone.
	DHCPInterface = "tap-dhcp"
	// VMInterface is the VM's only interface.
	VMInterface = "eth0"
	// MetadataIPv4 and MetadataIPv6 are the addresses the metadata service answers on.
	MetadataIPv4 = "169.254.169.254"
	MetadataIPv6 = "fe80::a9fe:a9fe"
)

const (
	netnsDir  = "/run/netns"
	markerDir = "/run/metaproxy-e2e/netns"
)

// Options configures New.
type Options struct {
	// Logf receives one line per namespace created or removed (e.g. t.Logf). Nil: silent.
	Logf func(format string, args ...any)
}

// NetworkSpec describes a Neutron network's DHCP side.
type NetworkSpec struct {
	ID      string // Neutron network id: the namespace is qdhcp-<ID>
	CIDR    string // the subnet, e.g. 10.0.0.0/24
	DHCPIP  string // the DHCP port's address, e.g. 10.0.0.2
	DHCPMAC string // the DHCP port's MAC (optional)
}

// Network is a qdhcp namespace.
type Network struct {
	ID        string
	Namespace string // qdhcp-<ID>
	Interface string // DHCPInterface
	DHCPIP    string
	prefix    netip.Prefix
	vms       int
}

// VMSpec describes a VM's port.
type VMSpec struct {
	// Name names the namespace vm-<Name> (letters, digits, '-', at most 11 characters) and the
	// veth end vif-<Name> in the qdhcp namespace.
	Name string
	IP   string // the port's fixed IP
	MAC  string // the port's mac_address (so the EUI-64 link-local matches Neutron's)
}

// VM is a VM namespace.
type VM struct {
	Name      string
	Namespace string // vm-<Name>
	Interface string // VMInterface
	IP        string
	MAC       string
	Network   *Network
	peer      string
}

// Fabric creates and removes the namespaces. Its methods are safe for concurrent use.
type Fabric struct {
	logf func(string, ...any)

	mu     sync.Mutex
	nets   map[string]*Network
	vms    map[string]*VM
	closed bool
}

// New removes namespaces a crashed earlier run left behind (markers whose owner process is gone)
// and returns an empty Fabric. Close it (t.Cleanup) to remove what it creates.
func New(ctx context.Context, o Options) (*Fabric, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("vmnet: needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("vmnet: iproute2: %w", err)
	}
	f := &Fabric{logf: o.Logf, nets: map[string]*Network{}, vms: map[string]*VM{}}
	if f.logf == nil {
		f.logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(markerDir, 0o755); err != nil {
		return nil, fmt.Errorf("vmnet: %w", err)
	}
	entries, err := os.ReadDir(markerDir)
	if err != nil {
		return nil, fmt.Errorf("vmnet: %w", err)
	}
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(markerDir, e.Name()))
		if ownerAlive(strings.TrimSpace(string(b))) {
			continue
		}
		if err := deleteNamespace(ctx, e.Name()); err != nil {
			return nil, fmt.Errorf("vmnet: remove stale namespace %s: %w", e.Name(), err)
		}
		f.logf("vmnet: removed stale namespace %s of an earlier run", e.Name())
	}
	return f, nil
}

var vmName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9-]{0,10}$`)

// AddNetwork creates qdhcp-<ID> with the DHCP bridge and the DHCP and metadata addresses.
func (f *Fabric) AddNetwork(ctx context.Context, s NetworkSpec) (*Network, error) {
	prefix, err := netip.ParsePrefix(s.CIDR)
	if err != nil {
		return nil, fmt.Errorf("vmnet: network %s: %w", s.ID, err)
	}
	dhcp, err := netip.ParseAddr(s.DHCPIP)
	if err != nil || !prefix.Contains(dhcp) {
		return nil, fmt.Errorf("vmnet: network %s: DHCP address %q not in %s", s.ID, s.DHCPIP, s.CIDR)
	}
	if s.ID == "" || strings.ContainsAny(s.ID, "/ ") {
		return nil, fmt.Errorf("vmnet: bad network id %q", s.ID)
	}
	n := &Network{ID: s.ID, Namespace: "qdhcp-" + s.ID, Interface: DHCPInterface, DHCPIP: s.DHCPIP, prefix: prefix}
	f.mu.Lock()
	if f.closed || f.nets[s.ID] != nil {
		f.mu.Unlock()
		return nil, fmt.Errorf("vmnet: network %s exists or fabric closed", s.ID)
	}
	f.nets[s.ID] = n
	f.mu.Unlock()

	ns := n.Namespace
	addr := fmt.Sprintf("%s/%d", s.DHCPIP, prefix.Bits())
	cmds := [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
		{"ip", "-n", ns, "link", "add", DHCPInterface, "type", "bridge"},
	}
	if s.DHCPMAC != "" {
		cmds = append(cmds, []string{"ip", "-n", ns, "link", "set", DHCPInterface, "address", s.DHCPMAC})
	}
	cmds = append(cmds,
		[]string{"ip", "-n", ns, "addr", "add", addr, "dev", DHCPInterface},
		[]string{"ip", "-n", ns, "addr", "add", MetadataIPv4 + "/32", "dev", DHCPInterface},
		[]string{"ip", "-n", ns, "-6", "addr", "add", MetadataIPv6 + "/64", "dev", DHCPInterface, "nodad"},
		[]string{"ip", "-n", ns, "link", "set", DHCPInterface, "up"},
	)
	if err := f.createNamespace(ctx, ns, cmds); err != nil {
		f.mu.Lock()
		delete(f.nets, s.ID)
		f.mu.Unlock()
		return nil, err
	}
	f.logf("vmnet: %s: %s, %s on %s", ns, addr, MetadataIPv4, DHCPInterface)
	return n, nil
}

// AddVM creates vm-<Name> attached to n with the port's IP and MAC and the metadata route.
func (f *Fabric) AddVM(ctx context.Context, n *Network, s VMSpec) (*VM, error) {
	if !vmName.MatchString(s.Name) {
		return nil, fmt.Errorf("vmnet: VM name %q: want [a-zA-Z0-9-]{1,11}", s.Name)
	}
	ip, err := netip.ParseAddr(s.IP)
	if err != nil || !n.prefix.Contains(ip) {
		return nil, fmt.Errorf("vmnet: VM %s: address %q not in %s", s.Name, s.IP, n.prefix)
	}
	vm := &VM{Name: s.Name, Namespace: "vm-" + s.Name, Interface: VMInterface, IP: s.IP, MAC: s.MAC,
		Network: n, peer: "vif-" + s.Name}
	f.mu.Lock()
	if f.closed || f.vms[s.Name] != nil || f.nets[n.ID] != n {
		f.mu.Unlock()
		return nil, fmt.Errorf("vmnet: VM %s exists, network %s unknown, or fabric closed", s.Name, n.ID)
	}
	f.vms[s.Name] = vm
	n.vms++
	f.mu.Unlock()

	ns := vm.Namespace
	link := []string{"ip", "-n", ns, "link", "add", VMInterface}
	if s.MAC != "" {
		link = append(link, "address", s.MAC)
	}
	link = append(link, "type", "veth", "peer", "name", vm.peer, "netns", n.Namespace)
	cmds := [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		// No DAD: the EUI-64 link-local is usable at once, as on a booted VM.
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
		link,
		{"ip", "-n", n.Namespace, "link", "set", vm.peer, "master", DHCPInterface},
		{"ip", "-n", n.Namespace, "link", "set", vm.peer, "up"},
		{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", s.IP, n.prefix.Bits()), "dev", VMInterface},
		{"ip", "-n", ns, "link", "set", VMInterface, "up"},
		{"ip", "-n", ns, "route", "add", MetadataIPv4 + "/32", "via", n.DHCPIP},
	}
	if err := f.createNamespace(ctx, ns, cmds); err != nil {
		f.mu.Lock()
		delete(f.vms, s.Name)
		n.vms--
		f.mu.Unlock()
		return nil, err
	}
	f.logf("vmnet: %s: %s %s on %s", ns, s.IP, s.MAC, n.Namespace)
	return vm, nil
}

// RemoveVM deletes the VM's namespace (and with it the veth pair).
func (f *Fabric) RemoveVM(ctx context.Context, vm *VM) error {
	f.mu.Lock()
	if f.vms[vm.Name] != vm {
		f.mu.Unlock()
		return fmt.Errorf("vmnet: unknown VM %s", vm.Name)
	}
	delete(f.vms, vm.Name)
	vm.Network.vms--
	f.mu.Unlock()
	return deleteNamespace(ctx, vm.Namespace)
}

// RemoveNetwork deletes the qdhcp namespace (as the DHCP agent does when a network goes away).
// Its VMs' namespaces stay, with their veth pairs gone.
func (f *Fabric) RemoveNetwork(ctx context.Context, n *Network) error {
	f.mu.Lock()
	if f.nets[n.ID] != n {
		f.mu.Unlock()
		return fmt.Errorf("vmnet: unknown network %s", n.ID)
	}
	delete(f.nets, n.ID)
	f.mu.Unlock()
	return deleteNamespace(ctx, n.Namespace)
}

// Close deletes every namespace the Fabric created (VMs first). Safe to call more than once.
func (f *Fabric) Close() error {
	f.mu.Lock()
	f.closed = true
	var names []string
	for _, vm := range f.vms {
		names = append(names, vm.Namespace)
	}
	for _, n := range f.nets {
		names = append(names, n.Namespace)
	}
	f.vms, f.nets = map[string]*VM{}, map[string]*Network{}
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	for _, ns := range names {
		if err := deleteNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		} else {
			f.logf("vmnet: removed %s", ns)
		}
	}
	return errors.Join(errs...)
}

// Command returns a command that runs argv inside namespace ns (ip netns exec).
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// Exec runs argv inside the VM's namespace and returns its standard output; on failure the error
// holds the exit status and standard error.
func (f *Fabric) Exec(ctx context.Context, vm *VM, argv ...string) ([]byte, error) {
	return run(ctx, Command(ctx, vm.Namespace, argv...))
}

// NamespacePath is the file that names namespace ns (for setns or Envoy's
// network_namespace_filepath).
func NamespacePath(ns string) string { return filepath.Join(netnsDir, ns) }

// createNamespace writes the marker, creates the namespace and runs cmds; on error it removes
// the namespace again.
func (f *Fabric) createNamespace(ctx context.Context, ns string, cmds [][]string) error {
	marker := filepath.Join(markerDir, ns)
	if err := os.WriteFile(marker, []byte(ownerID()+"\n"), 0o644); err != nil {
		return fmt.Errorf("vmnet: %w", err)
	}
	if _, err := run(ctx, exec.CommandContext(ctx, "ip", "netns", "add", ns)); err != nil {
		_ = os.Remove(marker)
		return fmt.Errorf("vmnet: create %s: %w", ns, err)
	}
	for _, argv := range cmds {
		if _, err := run(ctx, exec.CommandContext(ctx, argv[0], argv[1:]...)); err != nil {
			return errors.Join(fmt.Errorf("vmnet: %s: %w", ns, err), deleteNamespace(context.WithoutCancel(ctx), ns))
		}
	}
	return nil
}

// deleteNamespace deletes ns if it exists, and its marker.
func deleteNamespace(ctx context.Context, ns string) error {
	if _, err := os.Stat(NamespacePath(ns)); err == nil {
		if _, err := run(ctx, exec.CommandContext(ctx, "ip", "netns", "delete", ns)); err != nil {
			return fmt.Errorf("vmnet: delete %s: %w", ns, err)
		}
	}
	if err := os.Remove(filepath.Join(markerDir, ns)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vmnet: %w", err)
	}
	return nil
}

func run(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// ownerID identifies this process across pid reuse: "<pid> <start time>".
func ownerID() string {
	return fmt.Sprintf("%d %s", os.Getpid(), startTime(os.Getpid()))
}

func ownerAlive(id string) bool {
	f := strings.Fields(id)
	if len(f) != 2 {
		return false
	}
	pid, err := strconv.Atoi(f[0])
	return err == nil && startTime(pid) == f[1]
}

// startTime is field 22 of /proc/<pid>/stat, or "" if the process does not exist.
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return ""
	}
	return fields[19]
}
