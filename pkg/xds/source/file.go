package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

// fileDoc is the networks file: YAML or JSON.
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
	ID        string `yaml:"id" json:"id"`
	Kind      string `yaml:"kind" json:"kind"`
	Namespace string `yaml:"namespace" json:"namespace"`
	Interface string `yaml:"interface" json:"interface"`
}

// File reads the node -> networks map from a YAML or JSON file. The file is read on every call and
// parsed again only when its content changed; a file that fails to parse is an error (the caller
// keeps the last good answer), never an empty answer.
type File struct {
	path     string
	netnsDir string

	mu   sync.Mutex
	last [sha256.Size]byte // of the content out was parsed from
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
	sum := sha256.Sum256(raw)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.out != nil && sum == f.last {
		return f.out, nil
	}
	nodes, err := ParseNetworks(raw, f.netnsDir)
	if err != nil {
		return nil, fmt.Errorf("networks file %s: %w", f.path, err)
	}
	f.last, f.out = sum, nodes
	return nodes, nil
}

// ParseNetworks parses a networks file (see File) and checks every entry. Unknown fields are errors,
// so that a typo does not silently drop a network, and so is a node given twice. All problems are
// reported at once.
func ParseNetworks(raw []byte, netnsDir string) (Nodes, error) {
	if netnsDir == "" {
		netnsDir = DefaultNetnsDir
	}
	doc, err := decodeFile(raw)
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	return checkNetworks(doc, netnsDir)
}

// checkNetworks checks every entry of doc and gives the nodes it names.
func checkNetworks(doc fileDoc, netnsDir string) (Nodes, error) {
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

// decodeFile decodes a networks file: with encoding/json when it is JSON, as generated files
// usually are, else as YAML (JSON is YAML, but a YAML parser took 4x the time and 2x the garbage
// of encoding/json on a 4.6 MB file of 100k networks, BenchmarkParseNetworks).
func decodeFile(raw []byte) (fileDoc, error) {
	if json.Valid(raw) {
		return decodeJSON(raw)
	}
	return decodeYAML(raw)
}

// decodeYAML decodes a YAML networks file.
func decodeYAML(raw []byte) (fileDoc, error) {
	var doc fileDoc
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true) // and yaml.v3 refuses a key given twice
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return fileDoc{}, err
	}
	return doc, nil
}

// decodeJSON decodes a JSON networks file as strictly as decodeFile decodes YAML at the levels
// where a mistake loses networks: unknown fields are errors, and so is "nodes" or a node id given
// twice (encoding/json would keep the last one silently). Within an entry, encoding/json's rules
// apply: its keys match case-insensitively and a repeated key keeps the last value.
func decodeJSON(raw []byte) (fileDoc, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var doc fileDoc
	err := jsonObject(dec, func(key string) error {
		if key != "nodes" {
			return fmt.Errorf("unknown field %q (want nodes)", key)
		}
		if doc.Nodes != nil {
			return errors.New(`"nodes" given twice`)
		}
		doc.Nodes = map[string][]fileNetwork{}
		return jsonObject(dec, func(node string) error {
			if _, dup := doc.Nodes[node]; dup {
				return fmt.Errorf("node %q given twice", node)
			}
			var nets []fileNetwork
			if err := dec.Decode(&nets); err != nil {
				return fmt.Errorf("node %s: %w", node, err)
			}
			doc.Nodes[node] = nets
			return nil
		})
	})
	if err != nil {
		return fileDoc{}, err
	}
	return doc, nil
}

// jsonObject reads a JSON object (or null) from dec, calling member with each key; member reads
// the value.
func jsonObject(dec *json.Decoder, member func(key string) error) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t == nil {
		return nil
	}
	if t != json.Delim('{') {
		return fmt.Errorf("want an object, got %v", t)
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if err := member(t.(string)); err != nil { // object keys are strings
			return err
		}
	}
	_, err = dec.Token() // the closing brace (json.Valid held)
	return err
}
