package xdscmd

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metaproxy/metaproxy/pkg/listen"
)

// TestPlaintextOnlyWhereItIsBoundToLoopback: Validate takes "localhost" for loopback by its name,
// but the name is resolved (/etc/hosts, then DNS) when the socket is bound, so plain text is
// judged again on the address actually bound: loopback and UNIX sockets pass, anything else is
// refused with what to do.
func TestPlaintextOnlyWhereItIsBoundToLoopback(t *testing.T) {
	for name, tc := range map[string]struct {
		addr string
		ok   bool
	}{
		"IPv4 loopback": {"127.0.0.1:0", true},
		"localhost":     {"localhost:0", true},
		"UNIX socket":   {"unix://" + filepath.Join(t.TempDir(), "xds.sock"), true},
		"every address": {"0.0.0.0:0", false},
	} {
		t.Run(name, func(t *testing.T) {
			lis, err := listen.Open(tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			err = plaintextOnLoopback(lis)
			if tc.ok != (err == nil) {
				t.Fatalf("%s bound to %s: %v", tc.addr, lis.Addr(), err)
			}
			if err != nil && !strings.Contains(err.Error(), "--tls-cert") {
				t.Errorf("the refusal does not say what to configure: %v", err)
			}
		})
	}
	if l, err := net.Listen("tcp", "[::1]:0"); err == nil { // IPv6 loopback, where the host has it
		defer l.Close()
		if err := plaintextOnLoopback(l); err != nil {
			t.Errorf("[::1]: %v", err)
		}
	}
}
