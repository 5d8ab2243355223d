package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/netns"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// ovnmeta-<network> is the namespace of ML2/OVN's metadata port on a chassis (made by xds chassis or
// neutron-ovn-metadata-agent): a network, like qdhcp-.
var nsPattern = regexp.MustCompile(`^(qdhcp|qrouter|ovnmeta)-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$`)

// Namespaces serves the qdhcp-<uuid>, ovnmeta-<uuid> and qrouter-<uuid> namespaces found in a
// directory on this host, all for one node. Each namespace is entered (pkg/netns) to check that it is a live
// namespace and not a stale file; the interface that carries fe80::a9fe:a9fe, if any, is
// looked up inside it so that the IPv6 listener can be bound there. A namespace deleted and created
// again at the same path gets a new Network.NamespaceGeneration.
type Namespaces struct {
	dir     string
	nodeID  string
	routers bool
	log     *slog.Logger
	gens    generations
}

var _ Source = (*Namespaces)(nil)

// NewNamespaces returns a Source for the namespaces under dir (DefaultNetnsDir when empty), served
// by nodeID. qrouter- namespaces are included only when routers is true.
func NewNamespaces(dir, nodeID string, routers bool, log *slog.Logger) (*Namespaces, error) {
	if dir == "" {
		dir = DefaultNetnsDir
	}
	if nodeID == "" {
		return nil, errors.New("namespace source: empty node id")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Namespaces{dir: dir, nodeID: nodeID, routers: routers, log: log}, nil
}

// Networks implements Source. A missing directory means "no namespaces yet" (an empty node), a
// namespace that does not open is logged and skipped.
func (s *Namespaces) Networks(ctx context.Context) (Nodes, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return Nodes{s.nodeID: nil}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces in %s: %w", s.dir, err)
	}
	var nets []Network
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m := nsPattern.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		kind := resolve.KindNetwork
		if m[1] == "qrouter" {
			if !s.routers {
				continue
			}
			kind = resolve.KindRouter
		}
		path := filepath.Join(s.dir, e.Name())
		nw, err := s.gens.local(Network{Kind: kind, ID: m[2], NamespacePath: path})
		if err != nil {
			s.log.Warn("skipping namespace that does not open", "namespace", path, "error", err)
			continue
		}
		nets = append(nets, nw)
	}
	s.gens.prune(nets)
	return Normalize(Nodes{s.nodeID: nets}), nil
}

// generations remembers which namespace each path named at the last poll, and how often that
// changed: a DHCP agent that deletes and recreates qdhcp-<id> leaves the path alone, but Envoy's
// socket in the old namespace is dead. A namespace is identified by its cookie (SO_NETNS_COOKIE,
// Linux 5.14+, unique while the host runs), or else by the device and inode of its file (which the
// kernel may hand to a namespace created after the old one is freed).
type generations struct {
	mu   sync.Mutex
	seen map[string]namespaceID
}

type namespaceID struct {
	cookie, dev, ino uint64
	gen              uint32
}

// local completes nw from the namespace at nw.NamespacePath on this host: it must open as a network
// namespace; its generation and the interface holding fe80::a9fe:a9fe are filled in.
func (g *generations) local(nw Network) (Network, error) {
	var st unix.Stat_t
	if err := unix.Stat(nw.NamespacePath, &st); err != nil {
		return nw, fmt.Errorf("stat %s: %w", nw.NamespacePath, err)
	}
	iface, cookie, err := inspect(nw.NamespacePath)
	if err != nil {
		return nw, err
	}
	nw.Interface = iface
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen == nil {
		g.seen = map[string]namespaceID{}
	}
	id := namespaceID{cookie: cookie, dev: uint64(st.Dev), ino: st.Ino}
	if prev, ok := g.seen[nw.NamespacePath]; ok {
		id.gen = prev.gen
		if prev.cookie != id.cookie || prev.dev != id.dev || prev.ino != id.ino {
			id.gen++
		}
	}
	g.seen[nw.NamespacePath] = id
	nw.NamespaceGeneration = id.gen
	return nw, nil
}

// prune forgets the paths not in nets (so the memory follows the namespaces that exist; a path
// that comes back after a poll without it starts again at generation 0, which is a change for Envoy
// if the previous generation was odd, and harmless otherwise: the old listener was removed).
func (g *generations) prune(nets []Network) {
	keep := make(map[string]bool, len(nets))
	for _, n := range nets {
		keep[n.NamespacePath] = true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for p := range g.seen {
		if !keep[p] {
			delete(g.seen, p)
		}
	}
}

// soNetnsCookie is SO_NETNS_COOKIE (asm-generic/socket.h, the same on x86 and arm; not in x/sys).
const soNetnsCookie = 71

// inspect enters the namespace at path and returns the name of its interface that holds
// fe80::a9fe:a9fe ("" when none does) and its cookie (0 on kernels without SO_NETNS_COOKIE).
func inspect(path string) (iface string, cookie uint64, err error) {
	err = netns.Do(path, func() error {
		var err error
		if iface, err = interfaceWith(netip.MustParseAddr(contract.MetadataIPv6)); err != nil {
			return err
		}
		cookie = netnsCookie()
		return nil
	})
	return iface, cookie, err
}

// netnsCookie returns the cookie of the current thread's network namespace, 0 if unknown.
func netnsCookie() uint64 {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0
	}
	return c
}

// interfaceWith returns the interface of the current namespace that has addr, or "".
func interfaceWith(addr netip.Addr) (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	for _, ifc := range ifaces {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap() == addr {
				return ifc.Name, nil
			}
		}
	}
	return "", nil
}
