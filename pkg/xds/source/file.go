package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

// fileDoc is the networks file: YAML or JSON (JSON is YAML).
//
//	nodes:
//	  compute-1:
//	    - id: 6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11
//	      kind: network                  # or router; default network
//	      namespace: /var/run/netns/qdhcp-6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11  # default
//	      interface: tap1234abcd-12      # optional: enables the [fe80::a9fe:a9fe]:80 listener
type fileDoc struct {
	Nodes map[string][]fileNetwork `yaml:"nodes"`
}

type fileNetwork struct {
	ID        string `yaml:"id"`
	Kind      string `yaml:"kind"`
	Namespace string `yaml:"namespace"`
	Interface string `yaml:"interface"`
}

// File reads the node -> networks map from a YAML or JSON file. The file is read on every call and
// parsed again only when its content changed; a file that fails to parse is an error (the caller
// keeps the last good answer), never an empty answer.
type File struct {
	path     string
	netnsDir string

	mu   sync.Mutex
	last []byte
	out  Nodes
}

var _ Source = (*File)(nil)

// NewFile returns a Source reading path. Namespace paths default to netnsDir/qdhcp-<id> or
// netnsDir/qrouter-<id>; an empty netnsDir means DefaultNetnsDir.
func NewFile(path, netnsDir string) *File {
	if netnsDir == "" {
		netnsDir = DefaultNetnsDir
	}
	return &File{path: path, netnsDir: netnsDir}
}

// Networks implements Source.
func (f *File) Networks(ctx context.Context) (Nodes, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return nil, fmt.Errorf("read networks file: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.out != nil && bytes.Equal(raw, f.last) {
		return f.out, nil
	}
	nodes, err := ParseNetworks(raw, f.netnsDir)
	if err != nil {
		return nil, fmt.Errorf("networks file %s: %w", f.path, err)
	}
	f.last, f.out = raw, nodes
	return nodes, nil
}

// ParseNetworks parses a networks file (see File) and checks every entry. Unknown fields are errors,
// so that a typo does not silently drop a network. All problems are reported at once.
func ParseNetworks(raw []byte, netnsDir string) (Nodes, error) {
	if netnsDir == "" {
		netnsDir = DefaultNetnsDir
	}
	var doc fileDoc
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if doc.Nodes == nil {
		return nil, errors.New(`no "nodes" map: want nodes: {<node id>: [{id: <network id>, kind: network|router}]}`)
	}
	var errs []error
	nodes := make(Nodes, len(doc.Nodes))
	for node, nets := range doc.Nodes {
		if node == "" {
			errs = append(errs, errors.New("empty node id"))
			continue
		}
		out := make([]Network, 0, len(nets))
		for i, n := range nets {
			kind, err := ParseKind(n.Kind)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %s entry %d: %w", node, i, err))
				continue
			}
			if !contract.ValidID(n.ID) {
				errs = append(errs, fmt.Errorf("node %s entry %d: id %q is not a valid Neutron id", node, i, n.ID))
				continue
			}
			if n.Interface != "" && !ValidInterface(n.Interface) {
				errs = append(errs, fmt.Errorf("node %s entry %d: interface %q is not a Linux interface name", node, i, n.Interface))
				continue
			}
			ns := n.Namespace
			if ns == "" {
				ns = NamespacePath(netnsDir, kind, n.ID)
			}
			out = append(out, Network{Kind: kind, ID: n.ID, NamespacePath: ns, Interface: n.Interface})
		}
		nodes[node] = out
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return Normalize(nodes), nil
}
