package ovnmeta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	mpnetns "github.com/metaproxy/metaproxy/pkg/netns"
	"github.com/metaproxy/metaproxy/pkg/ovsctl"
)

// Network is what one ovnmeta namespace is made from: a Neutron network and its metadata port.
type Network struct {
	// ID is the Neutron network id (a lower-case UUID).
	ID string
	// PortID is the metadata port's id: the OVS interface's external_ids:iface-id.
	PortID string
	// MAC is the metadata port's MAC address.
	MAC net.HardwareAddr
	// Addresses are the metadata port's IPv4 addresses with their subnets' prefix lengths
	// (the agent's neutron:cidrs), e.g. 10.0.0.2/24. At least one.
	Addresses []netip.Prefix
}

// Validate says why n cannot be provisioned.
func (n Network) Validate() error {
	var errs []error
	if _, ok := NetworkOf(NamespaceName(n.ID)); !ok {
		errs = append(errs, fmt.Errorf("network id %q is not a lower-case UUID", n.ID))
	}
	if n.PortID == "" || strings.ContainsAny(n.PortID, "\x00\n") {
		errs = append(errs, fmt.Errorf("network %s: bad metadata port id %q", n.ID, n.PortID))
	}
	if len(n.MAC) != 6 {
		errs = append(errs, fmt.Errorf("network %s: metadata port MAC %q is not a 48-bit MAC", n.ID, n.MAC))
	}
	if len(n.Addresses) == 0 {
		errs = append(errs, fmt.Errorf("network %s: metadata port has no IPv4 address", n.ID))
	}
	for _, a := range n.Addresses {
		if !a.IsValid() || !a.Addr().Is4() {
			errs = append(errs, fmt.Errorf("network %s: %v is not an IPv4 address with prefix", n.ID, a))
		}
	}
	return errors.Join(errs...)
}

// Switch is the Open vSwitch side of provisioning (*ovsctl.OVS).
type Switch interface {
	State(ctx context.Context) (ovsctl.State, error)
	PlugPort(ctx context.Context, bridge, port string, externalIDs map[string]string) error
	UnplugPort(ctx context.Context, port string) error
}

var _ Switch = (*ovsctl.OVS)(nil)

// Options configure a Provisioner.
type Options struct {
	// NetnsDir holds the named namespaces (the agent's, `ip netns`'s: /var/run/netns).
	NetnsDir string
	// Bridge is the OVN integration bridge (Open_vSwitch external_ids:ovn-bridge, br-int by default).
	Bridge string
	// Switch plugs the host ends into Bridge.
	Switch Switch
	// Iptables is the iptables program; empty: "iptables" from PATH.
	Iptables string
	// Log receives one line per change. Nil: discarded.
	Log *slog.Logger
}

// Provisioner creates, checks and removes ovnmeta namespaces. Its methods may be called from one
// goroutine at a time (the chassis reconcile loop).
type Provisioner struct {
	o Options

	mu sync.Mutex
	// checksummed records the namespaces (by inode) whose checksum rule was checked, so that
	// iptables runs once per namespace and process, not on every pass.
	checksummed map[string]uint64
}

// NewProvisioner returns a Provisioner.
func NewProvisioner(o Options) (*Provisioner, error) {
	switch {
	case o.NetnsDir == "":
		return nil, errors.New("ovnmeta: no namespace directory")
	case o.Bridge == "":
		return nil, errors.New("ovnmeta: no OVN bridge")
	case o.Switch == nil:
		return nil, errors.New("ovnmeta: no switch")
	}
	if o.Iptables == "" {
		o.Iptables = "iptables"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Provisioner{o: o, checksummed: map[string]uint64{}}, nil
}

// Namespaces returns the network ids of the ovnmeta-<UUID> namespaces present in the namespace
// directory, sorted. Names that do not have this form are not listed (they are not ours).
func (p *Provisioner) Namespaces() ([]string, error) {
	entries, err := os.ReadDir(p.o.NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces in %s: %w", p.o.NetnsDir, err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := NetworkOf(e.Name()); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Ensure provisions n's namespace, or brings an existing one (the agent's, or ours from before a
// restart) to exactly the state the agent leaves: only what differs is changed, so that a working
// namespace is never disturbed. sw is the switch's state read at the start of this pass. Ensure
// reports whether it changed anything.
func (p *Provisioner) Ensure(ctx context.Context, sw ovsctl.State, n Network) (bool, error) {
	if err := n.Validate(); err != nil {
		return false, fmt.Errorf("ovnmeta: %w", err)
	}
	br, ok := sw.Bridges[p.o.Bridge]
	if !ok {
		return false, fmt.Errorf("ovnmeta: the OVN bridge %s does not exist (Open_vSwitch external_ids:ovn-bridge)", p.o.Bridge)
	}
	log := p.o.Log.With("network", n.ID)
	ns := NamespacePath(p.o.NetnsDir, n.ID)
	hostName, innerName := VethNames(n.ID)
	changed := false
	note := func(what string, args ...any) {
		changed = true
		log.Info(what, args...)
	}

	nsh, err := netns.GetFromPath(ns)
	if errors.Is(err, os.ErrNotExist) {
		if err := createNamespace(p.o.NetnsDir, NamespaceName(n.ID)); err != nil && !errors.Is(err, os.ErrExist) {
			return false, fmt.Errorf("ovnmeta: %w", err)
		}
		note("created namespace", "namespace", ns)
		nsh, err = netns.GetFromPath(ns)
	}
	if err != nil {
		return changed, fmt.Errorf("ovnmeta: open namespace %s: %w", ns, err)
	}
	defer nsh.Close()
	inside, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return changed, fmt.Errorf("ovnmeta: netlink in %s: %w", ns, err)
	}
	defer inside.Close()

	inner, err := inside.LinkByName(innerName)
	if err != nil {
		if !isNotFound(err) {
			return changed, fmt.Errorf("ovnmeta: look up %s in %s: %w", innerName, ns, err)
		}
		// As the agent: a host end without its peer in the namespace is deleted and the pair made again.
		if old, err := netlink.LinkByName(hostName); err == nil {
			if err := netlink.LinkDel(old); err != nil {
				return changed, fmt.Errorf("ovnmeta: delete the stale %s: %w", hostName, err)
			}
			note("deleted a host-side veth end without its peer", "device", hostName)
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: innerName, PeerNamespace: netlink.NsFd(int(nsh))}
		if err := netlink.LinkAdd(veth); err != nil {
			return changed, fmt.Errorf("ovnmeta: create veth %s/%s: %w", hostName, innerName, err)
		}
		note("created veth pair", "host", hostName, "inner", innerName)
		if inner, err = inside.LinkByName(innerName); err != nil {
			return changed, fmt.Errorf("ovnmeta: look up %s in %s: %w", innerName, ns, err)
		}
		// The agent removes the IPv6 link-local address the kernel gives the inner end when it goes
		// up (it removes every address it did not ask for). Not generating one leaves the same
		// state without a race between the kernel adding it and this pass listing the addresses.
		// A host without IPv6 refuses the setting and has no such address anyway.
		if err := inside.LinkSetIP6AddrGenMode(inner, addrGenModeNone); err != nil {
			log.Debug("no IPv6 address generation mode on the inner end", "device", innerName, "error", err)
		}
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return changed, fmt.Errorf("ovnmeta: look up %s: %w", hostName, err)
	}

	// MAC before the link goes up, as the agent sets it on a new pair too (a MAC change on an up
	// veth is allowed, but the neighbours' caches would hold the old one).
	if !strings.EqualFold(inner.Attrs().HardwareAddr.String(), n.MAC.String()) {
		if err := inside.LinkSetHardwareAddr(inner, n.MAC); err != nil {
			return changed, fmt.Errorf("ovnmeta: set MAC of %s: %w", innerName, err)
		}
		note("set MAC", "device", innerName, "mac", n.MAC.String())
	}
	for _, l := range []struct {
		h    *netlink.Handle
		link netlink.Link
	}{{nil, host}, {inside, inner}} {
		if l.link.Attrs().Flags&net.FlagUp != 0 {
			continue
		}
		var err error
		if l.h == nil {
			err = netlink.LinkSetUp(l.link)
		} else {
			err = l.h.LinkSetUp(l.link)
		}
		if err != nil {
			return changed, fmt.Errorf("ovnmeta: set %s up: %w", l.link.Attrs().Name, err)
		}
		note("set link up", "device", l.link.Attrs().Name)
	}

	if err := p.ensureAddresses(inside, inner, n, note); err != nil {
		return changed, err
	}

	// The host end on the OVN bridge, on no other, with the metadata port as iface-id.
	port, plugged := sw.Ports[hostName]
	if plugged && port.Bridge != p.o.Bridge {
		if err := p.o.Switch.UnplugPort(ctx, hostName); err != nil {
			return changed, fmt.Errorf("ovnmeta: %w", err)
		}
		note("took the port off another bridge", "port", hostName, "bridge", port.Bridge)
		plugged = false
	}
	if !plugged || port.ExternalIDs["iface-id"] != n.PortID {
		if err := p.o.Switch.PlugPort(ctx, p.o.Bridge, hostName, map[string]string{"iface-id": n.PortID}); err != nil {
			return changed, fmt.Errorf("ovnmeta: %w", err)
		}
		note("plugged into the OVN bridge", "port", hostName, "bridge", p.o.Bridge, "iface_id", n.PortID)
	}

	if br.DatapathType == "netdev" {
		added, err := p.ensureChecksum(ns)
		if err != nil {
			return changed, err
		}
		if added {
			note("added the checksum-fill rule (netdev datapath)", "namespace", ns)
		}
	}
	return changed, nil
}

// ensureAddresses leaves exactly n's addresses and 169.254.169.254/32 on the inner end: like the
// agent, every other address (an IPv6 link-local included) is removed, and only IPv4 is added.
func (p *Provisioner) ensureAddresses(h *netlink.Handle, link netlink.Link, n Network, note func(string, ...any)) error {
	want := map[netip.Prefix]bool{netip.MustParsePrefix(MetadataCIDR): true}
	for _, a := range n.Addresses {
		want[a] = true
	}
	have, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("ovnmeta: list addresses of %s: %w", link.Attrs().Name, err)
	}
	present := map[netip.Prefix]bool{}
	for _, a := range have {
		pfx, ok := prefixOf(a.IPNet)
		if !ok {
			continue
		}
		if want[pfx] {
			present[pfx] = true
			continue
		}
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("ovnmeta: remove %s from %s: %w", pfx, link.Attrs().Name, err)
		}
		note("removed an address", "device", link.Attrs().Name, "address", pfx.String())
	}
	add := make([]netip.Prefix, 0, len(want))
	for pfx := range want {
		if !present[pfx] {
			add = append(add, pfx)
		}
	}
	sort.Slice(add, func(i, j int) bool { return add[i].String() < add[j].String() })
	for _, pfx := range add {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), 32)}}
		if err := h.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ovnmeta: add %s to %s: %w", pfx, link.Attrs().Name, err)
		}
		note("added an address", "device", link.Attrs().Name, "address", pfx.String())
	}
	return nil
}

// checksumRule is the agent's rule (wrap=False: straight in the built-in chain).
var checksumRule = []string{"POSTROUTING", "-p", "tcp", "-m", "tcp", "-j", "CHECKSUM", "--checksum-fill"}

// ensureChecksum makes sure the namespace's mangle table has checksumRule; it reports whether the
// rule had to be added. A namespace checked before (same inode) is not checked again.
func (p *Provisioner) ensureChecksum(ns string) (bool, error) {
	ino, err := inode(ns)
	if err != nil {
		return false, fmt.Errorf("ovnmeta: %w", err)
	}
	p.mu.Lock()
	done := p.checksummed[ns] == ino
	p.mu.Unlock()
	if done {
		return false, nil
	}
	added := false
	err = mpnetns.Do(ns, func() error {
		check := exec.Command(p.o.Iptables, append([]string{"-w", "-t", "mangle", "-C"}, checksumRule...)...)
		if check.Run() == nil {
			return nil
		}
		out, err := exec.Command(p.o.Iptables, append([]string{"-w", "-t", "mangle", "-A"}, checksumRule...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables -t mangle -A %s: %w: %s", strings.Join(checksumRule, " "), err, strings.TrimSpace(string(out)))
		}
		added = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("ovnmeta: checksum rule in %s: %w", ns, err)
	}
	p.mu.Lock()
	p.checksummed[ns] = ino
	p.mu.Unlock()
	return added, nil
}

// Remove tears a network's namespace down as the agent does: the OVS port, the veth pair, then the
// namespace unless something other than lo is left in it. Nothing present is not an error.
func (p *Provisioner) Remove(ctx context.Context, networkID string) error {
	if _, ok := NetworkOf(NamespaceName(networkID)); !ok {
		return fmt.Errorf("ovnmeta: network id %q is not a lower-case UUID", networkID)
	}
	log := p.o.Log.With("network", networkID)
	ns := NamespacePath(p.o.NetnsDir, networkID)
	hostName, _ := VethNames(networkID)
	if err := p.o.Switch.UnplugPort(ctx, hostName); err != nil {
		return fmt.Errorf("ovnmeta: %w", err)
	}
	if link, err := netlink.LinkByName(hostName); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("ovnmeta: delete %s: %w", hostName, err)
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("ovnmeta: look up %s: %w", hostName, err)
	}
	p.mu.Lock()
	delete(p.checksummed, ns)
	p.mu.Unlock()
	nsh, err := netns.GetFromPath(ns)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ovnmeta: open namespace %s: %w", ns, err)
	}
	others, err := devicesBesidesLo(nsh)
	nsh.Close()
	if err != nil {
		return fmt.Errorf("ovnmeta: %s: %w", ns, err)
	}
	if len(others) > 0 {
		log.Warn("namespace left in place: it holds devices that are not ours", "namespace", ns, "devices", others)
		return nil
	}
	if err := deleteNamespace(ns); err != nil {
		return fmt.Errorf("ovnmeta: %w", err)
	}
	log.Info("removed namespace", "namespace", ns)
	return nil
}

func devicesBesidesLo(nsh netns.NsHandle) ([]string, error) {
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones), true
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h): no IPv6 link-local address.
const addrGenModeNone = 1
