package translate

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

var update = flag.Bool("update", false, "rewrite testdata/*.yaml from the current output")

const (
	net1   = "6b1f4f4e-0d7e-4c4b-9a55-2f0c2f6f0d11"
	net2   = "0a6e3c52-9f55-4f0e-8d0c-6a2d3f9b8e21"
	router = "f3b0c1de-5a1e-4a7e-9b1a-0c2e4d6f8a10"
)

func network(id, iface string) source.Network {
	return source.Network{Kind: resolve.KindNetwork, ID: id, NamespacePath: "/var/run/netns/qdhcp-" + id, Interface: iface}
}

var goldenCases = map[string]struct {
	nets     []source.Network
	settings func(*Settings)
}{
	"no-networks": {},
	"one-network-ipv4": {
		nets: []source.Network{network(net1, "")},
	},
	"networks-router-ipv6": {
		nets: []source.Network{
			{Kind: resolve.KindRouter, ID: router, NamespacePath: "/var/run/netns/qrouter-" + router},
			network(net2, "tap0a6e3c52-9f"),
			network(net1, ""),
		},
	},
	"rate-limit-both-versions": {
		nets: []source.Network{network(net1, "tap6b1f4f4e-0d")},
		settings: func(s *Settings) {
			s.RateLimit = RateLimit{Enabled: true, IPVersions: []int{4, 6}, BaseWindow: 10 * time.Second,
				BaseQueryRateLimit: 10, BurstWindow: time.Second, BurstQueryRateLimit: 5}
		},
	},
	"rate-limit-ipv6-only": {
		nets: []source.Network{network(net1, "tap6b1f4f4e-0d")},
		settings: func(s *Settings) {
			s.RateLimit.Enabled, s.RateLimit.IPVersions = true, []int{6}
		},
	},
	"nova-https-hosts-extproc-tcp": {
		nets: []source.Network{network(net1, "")},
		settings: func(s *Settings) {
			s.Nova = Nova{Hosts: []string{"nova-1.example.org", "192.0.2.10"}, Port: 8775, Protocol: "https",
				CACert: "/etc/metaproxy/ca.pem", ClientCert: "/etc/metaproxy/client.pem", ClientKey: "/etc/metaproxy/client.key"}
			s.ExtProc = ExtProc{Address: "127.0.0.1:50051", MessageTimeout: 2 * time.Second, TLS: EnvoyTLS{SDSDir: "/etc/metaproxy/tls"}}
			s.Timeouts.Server = 60 * time.Second
		},
	},
	"envoy-tracing": {
		nets: []source.Network{network(net1, "")},
		settings: func(s *Settings) {
			s.EnvoyTracing = EnvoyTracing{Collector: "otel-collector.example.org:4317"}
		},
	},
	"nova-https-insecure-one-name": {
		settings: func(s *Settings) {
			s.Nova = Nova{Hosts: []string{"nova.example.org"}, Port: 8775, Protocol: "https", Insecure: true}
		},
	},
}

// sharedFor returns the Shared of a golden case's settings.
func sharedFor(t *testing.T, settings func(*Settings)) *Shared {
	t.Helper()
	s := DefaultSettings()
	if settings != nil {
		settings(&s)
	}
	sh, err := NewShared(s)
	if err != nil {
		t.Fatalf("NewShared: %v", err)
	}
	return sh
}

func TestGolden(t *testing.T) {
	for name, tc := range goldenCases {
		t.Run(name, func(t *testing.T) {
			sh := sharedFor(t, tc.settings)
			res, err := sh.Node(tc.nets)
			if err != nil {
				t.Fatalf("Node: %v", err)
			}
			for _, m := range all(res) {
				validateDeep(t, m)
			}
			got := render(t, res)
			path := filepath.Join("testdata", name+".yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./pkg/xds/translate -update)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s differs (-want +got; regenerate with -update and review the diff):\n%s", path, diff)
			}
		})
	}
}

func TestNodeIsDeterministic(t *testing.T) {
	sh, err := NewShared(DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	a, err := sh.Node([]source.Network{network(net1, "tap1"), network(net2, "")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := sh.Node([]source.Network{network(net2, ""), network(net1, "tap1")})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a, b, protocmp.Transform()); diff != "" {
		t.Errorf("input order changed the output:\n%s", diff)
	}
	var names []string
	for _, l := range a.Listeners {
		names = append(names, l.GetName())
	}
	want := []string{
		"metadata-network-" + net2 + "-ipv4",
		"metadata-network-" + net1 + "-ipv4",
		"metadata-network-" + net1 + "-ipv6",
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("listener names (-want +got):\n%s", diff)
	}
}

// TestListenersNameTheSharedRoutes: every listener of a Shared names exactly the routes Routes
// returns, as go-control-plane's own GetResourceReferences reads them (package serve relies on it
// to check its snapshots' consistency without unpacking every listener), for every golden case.
func TestListenersNameTheSharedRoutes(t *testing.T) {
	for name, tc := range goldenCases {
		t.Run(name, func(t *testing.T) {
			sh := sharedFor(t, tc.settings)
			want := map[string]bool{}
			for _, r := range sh.Routes() {
				want[r.GetName()] = true
			}
			for _, n := range append(tc.nets, network(net2, "tap0a6e3c52-9f")) {
				ls, err := sh.Listeners(n)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ls {
					refs := cache.GetResourceReferences(map[string]types.ResourceWithTTL{l.GetName(): {Resource: l}})
					if diff := cmp.Diff(map[resource.Type]map[string]bool{resource.RouteType: want}, refs); diff != "" {
						t.Errorf("%s references (-Routes +listener):\n%s", l.GetName(), diff)
					}
				}
			}
		})
	}
}

func TestNodeRejects(t *testing.T) {
	sh, err := NewShared(DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]source.Network{
		"bad id":        {Kind: resolve.KindNetwork, ID: "../etc", NamespacePath: "/x"},
		"no namespace":  {Kind: resolve.KindNetwork, ID: net1},
		"bad interface": {Kind: resolve.KindNetwork, ID: net1, NamespacePath: "/x", Interface: "a/b"},
		"unknown kind":  {Kind: 9, ID: net1, NamespacePath: "/x"},
	}
	for name, n := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := sh.Node([]source.Network{n}); err == nil {
				t.Errorf("Node(%+v) succeeded, want an error", n)
			}
		})
	}
	t.Run("duplicate", func(t *testing.T) {
		if _, err := sh.Node([]source.Network{network(net1, ""), network(net1, "")}); err == nil {
			t.Error("duplicate network accepted")
		}
	})
}

func TestSettingsValidate(t *testing.T) {
	tests := map[string]struct {
		mutate func(*Settings)
		want   []string // substrings of the joined error; nil = valid
	}{
		"defaults": {mutate: func(*Settings) {}},
		"everything wrong at once": {
			mutate: func(s *Settings) {
				s.Nova = Nova{Port: 0, Protocol: "ftp"}
				s.ExtProc = ExtProc{Address: "unix://relative"}
				s.Timeouts.Server = 0
			},
			want: []string{"no host", "port 0", "protocol \"ftp\"", "unix:///absolute/path", "message timeout", "timeout server"},
		},
		"envoy tracing collector without port": {
			mutate: func(s *Settings) { s.EnvoyTracing.Collector = "otel-collector" },
			want:   []string{"envoy tracing collector \"otel-collector\""},
		},
		"envoy tracing collector port 0": {
			mutate: func(s *Settings) { s.EnvoyTracing.Collector = "127.0.0.1:0" },
			want:   []string{"want HOST:PORT"},
		},
		"envoy tracing on": {mutate: func(s *Settings) { s.EnvoyTracing.Collector = "127.0.0.1:4317" }},
		"tls material with http": {
			mutate: func(s *Settings) { s.Nova.CACert = "/ca.pem" },
			want:   []string{"protocol is http"},
		},
		"client cert without key": {
			mutate: func(s *Settings) { s.Nova.Protocol, s.Nova.ClientCert = "https", "/c.pem" },
			want:   []string{"given together"},
		},
		"rate limit": {
			mutate: func(s *Settings) {
				s.RateLimit = RateLimit{Enabled: true, IPVersions: []int{5}, BaseWindow: time.Millisecond}
			},
			want: []string{"IP version 5", "at least 1s", "query limits"},
		},
		"extproc host port": {mutate: func(s *Settings) { s.ExtProc.Address = "extproc.local:50051" }},
		"extproc bad port":  {mutate: func(s *Settings) { s.ExtProc.Address = "127.0.0.1:x" }, want: []string{"HOST:PORT"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := DefaultSettings()
			tc.mutate(&s)
			err := s.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate succeeded, want errors")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestSplitHosts(t *testing.T) {
	if diff := cmp.Diff([]string{"a", "b"}, SplitHosts(" a, ,b ,")); diff != "" {
		t.Error(diff)
	}
}

func all(res Resources) []proto.Message {
	var out []proto.Message
	for _, l := range res.Listeners {
		out = append(out, l)
	}
	for _, r := range res.Routes {
		out = append(out, r)
	}
	for _, c := range res.Clusters {
		out = append(out, c)
	}
	return out
}

// validateDeep runs ValidateAll on m and on every message packed in an Any inside it, recursively:
// what Envoy will check when it loads the typed_config.
func validateDeep(t *testing.T, m proto.Message) {
	t.Helper()
	if err := validate(m); err != nil {
		t.Errorf("%v", err)
	}
	walk(m.ProtoReflect(), func(a *anypb.Any) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("unpack %s: %v", a.GetTypeUrl(), err)
			return
		}
		validateDeep(t, inner)
	})
}

func walk(m protoreflect.Message, onAny func(*anypb.Any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		visit := func(v protoreflect.Value) {
			msg := v.Message()
			if a, ok := msg.Interface().(*anypb.Any); ok {
				onAny(a)
				return
			}
			walk(msg, onAny)
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				visit(v.List().Get(i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { visit(mv); return true })
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			visit(v)
		}
		return true
	})
}

// render turns resources into block-style YAML through protojson (the same field names as Envoy's
// config dumps).
func render(t *testing.T, res Resources) []byte {
	t.Helper()
	doc := &yaml.Node{Kind: yaml.MappingNode}
	add := func(key string, msgs []proto.Message) {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, m := range msgs {
			js, err := protojson.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var n yaml.Node
			if err := yaml.Unmarshal(js, &n); err != nil {
				t.Fatal(err)
			}
			seq.Content = append(seq.Content, n.Content[0])
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, seq)
	}
	var ls, rs, cs []proto.Message
	for _, l := range res.Listeners {
		ls = append(ls, l)
	}
	for _, r := range res.Routes {
		rs = append(rs, r)
	}
	for _, c := range res.Clusters {
		cs = append(cs, c)
	}
	add("listeners", ls)
	add("routes", rs)
	add("clusters", cs)
	blockStyle(doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func blockStyle(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode {
		n.Style = 0
		if n.Tag == "!!str" && needsQuotes(n.Value) {
			n.Style = yaml.DoubleQuotedStyle
		}
		return
	}
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// needsQuotes keeps strings that YAML would read as something else quoted.
func needsQuotes(s string) bool {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return true
	}
	_, isString := v.(string)
	return !isString || v != s
}

// TestRecreatedNamespaceChangesTheAddress: a namespace of another generation gives the listener a
// different network_namespace_filepath naming the same file (so Envoy opens a new socket), and
// generations of the same parity the same one.
func TestRecreatedNamespaceChangesTheAddress(t *testing.T) {
	sh, err := NewShared(DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	path := func(gen uint32) string {
		t.Helper()
		n := network(net1, "tap6b1f4f4e-0d")
		n.NamespaceGeneration = gen
		res, err := sh.Node([]source.Network{n})
		if err != nil {
			t.Fatal(err)
		}
		var paths []string
		for _, l := range res.Listeners {
			paths = append(paths, l.GetAddress().GetSocketAddress().GetNetworkNamespaceFilepath())
		}
		if len(paths) != 2 || paths[0] != paths[1] {
			t.Fatalf("generation %d: listener namespaces %q, want the same for IPv4 and IPv6", gen, paths)
		}
		return paths[0]
	}
	first, second, third := path(0), path(1), path(2)
	if first != "/var/run/netns/qdhcp-"+net1 || second != "/var/run/netns/./qdhcp-"+net1 || third != first {
		t.Errorf("namespace paths by generation: %q %q %q", first, second, third)
	}
	if filepath.Clean(second) != first {
		t.Errorf("%q does not name %q", second, first)
	}
}

func TestListenerNetwork(t *testing.T) {
	for name, want := range map[string]string{
		ListenerName(resolve.KindNetwork, net1, 4):  net1,
		ListenerName(resolve.KindRouter, router, 6): router,
		"metadata-network-" + net1:                  "",
		"metadata-other-" + net1 + "-ipv4":          "",
		"metadata-network-a/b-ipv4":                 "",
		"something-else":                            "",
	} {
		got, ok := ListenerNetwork(name)
		if got != want || ok != (want != "") {
			t.Errorf("ListenerNetwork(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

// TestWithAttempt: the copy differs only in its metadata, and the original is untouched.
func TestWithAttempt(t *testing.T) {
	sh, err := NewShared(DefaultSettings())
	if err != nil {
		t.Fatal(err)
	}
	res, err := sh.Node([]source.Network{network(net1, "")})
	if err != nil {
		t.Fatal(err)
	}
	orig := res.Listeners[0]
	before := proto.Clone(orig)
	a1, a2 := WithAttempt(orig, 1), WithAttempt(orig, 2)
	if !proto.Equal(orig, before) {
		t.Fatal("WithAttempt changed its argument")
	}
	if proto.Equal(a1, orig) || proto.Equal(a1, a2) {
		t.Fatal("attempts do not change the listener")
	}
	if err := a2.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	a2.Metadata = nil
	if diff := cmp.Diff(orig, a2, protocmp.Transform()); diff != "" {
		t.Errorf("WithAttempt changed more than the metadata (-orig +attempt):\n%s", diff)
	}
}
