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

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/netns"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

var nsPattern = regexp.MustCompile(`^(qdhcp|qrouter)-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$`)

// Namespaces serves the qdhcp-<uuid> and qrouter-<uuid> namespaces found in a directory on this
// host, all for one node. Each namespace is entered (pkg/netns) to check that it is a live
// namespace and not a stale file; the interface that carries fe80::a9fe:a9fe, if any, is
// looked up inside it so that the IPv6 listener can be bound there.
type Namespaces struct {
	dir     string
	nodeID  string
	routers bool
	log     *slog.Logger
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
		iface, err := metadataInterface(path)
		if err != nil {
			s.log.Warn("skipping namespace that does not open", "namespace", path, "error", err)
			continue
		}
		nets = append(nets, Network{Kind: kind, ID: m[2], NamespacePath: path, Interface: iface})
	}
	return Normalize(Nodes{s.nodeID: nets}), nil
}

// metadataInterface returns the name of the interface of the namespace at path that holds
// fe80::a9fe:a9fe ("" when none does).
func metadataInterface(path string) (string, error) {
	var iface string
	err := netns.Do(path, func() error {
		var err error
		iface, err = interfaceWith(netip.MustParseAddr(contract.MetadataIPv6))
		return err
	})
	return iface, err
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
