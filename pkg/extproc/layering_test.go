package extproc_test

import (
	"go/build"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/metaproxy/metaproxy/"

// deps returns the packages of this module that pkg (e.g. "pkg/decide") imports, directly or not,
// leaving out tests.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		bp, err := build.ImportDir(filepath.Join("..", "..", filepath.FromSlash(p)), 0)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, imp := range bp.Imports {
			rel, ok := strings.CutPrefix(imp, module)
			if ok && !seen[rel] {
				seen[rel] = true
				walk(rel)
			}
		}
	}
	walk(pkg)
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// TestLayering: the decision path depends one way, request decoding -> resolve -> cache -> sign ->
// decide -> stream loop. The stream loop knows nothing of Neutron or signatures, the decision
// nothing of the stream loop.
func TestLayering(t *testing.T) {
	for pkg, forbidden := range map[string][]string{
		"pkg/extproc":     {"pkg/decide", "pkg/resolve", "pkg/sign", "pkg/answercache", "pkg/request", "pkg/osclient"},
		"pkg/decide":      {"pkg/extproc", "pkg/extproccmd", "pkg/osclient"},
		"pkg/sign":        {"pkg/resolve", "pkg/answercache", "pkg/request", "pkg/decide", "pkg/extproc"},
		"pkg/answercache": {"pkg/sign", "pkg/request", "pkg/decide", "pkg/extproc"},
		"pkg/request":     {"pkg/answercache", "pkg/sign", "pkg/decide", "pkg/extproc"},
		"pkg/resolve":     {"pkg/request", "pkg/answercache", "pkg/sign", "pkg/decide", "pkg/extproc"},
	} {
		got := deps(t, pkg)
		for _, f := range forbidden {
			if slices.Contains(got, f) {
				t.Errorf("%s depends on %s (all: %v)", pkg, f, got)
			}
		}
	}
}
