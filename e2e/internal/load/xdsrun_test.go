package load

import (
	"log/slog"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
)

// buildXDS builds cmd/xds for the test.
func buildXDS(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs cmd/xds")
	}
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+"/", "../../../cmd/xds").CombinedOutput()
	if err != nil {
		t.Fatalf("go build cmd/xds: %v\n%s", err, out)
	}
	return filepath.Join(dir, "xds")
}

// TestRunXDSAgainstCmdXDS runs a small fleet (20 nodes x 5 networks) against the real cmd/xds in
// both protocols, in plain text and over mutual TLS: every node gets its full configuration and
// the added network, nothing is NACKed or broken, and a delta client receives only the new
// listener for the change while a state-of-the-world client receives all of its listeners again.
func TestRunXDSAgainstCmdXDS(t *testing.T) {
	bin := buildXDS(t)
	const nodes, networks = 20, 5
	pki := t.TempDir()
	fleet := Fleet{Nodes: nodes, Networks: networks, AgentsPerNetwork: 2}
	var ids []string
	for i := range nodes {
		ids = append(ids, fleet.NodeID(i))
	}
	writePKI(t, pki, ids...).Issue(t, tlstest.Leaf{IPs: []string{"127.0.0.1"}, Server: true}).Write(t, pki, "xds")
	mtls := ClientTLS{CA: filepath.Join(pki, "ca.crt"), Cert: filepath.Join(pki, NodePlaceholder+".crt"), Key: filepath.Join(pki, NodePlaceholder+".key")}
	xdsTLS := []string{"--tls-cert=" + filepath.Join(pki, "xds.crt"), "--tls-key=" + filepath.Join(pki, "xds.key"), "--tls-client-ca=" + filepath.Join(pki, "ca.crt")}
	for name, tc := range map[string]struct {
		delta, afterReady bool
		tls               ClientTLS
		xdsArgs           []string
		want              map[string]ResourceCount
	}{
		"sotw":  {want: map[string]ResourceCount{"listeners": {Total: nodes * (networks + 1), PerNode: networks + 1, MinNode: networks + 1}}},
		"delta": {delta: true, want: map[string]ResourceCount{"listeners": {Total: nodes, PerNode: 1, MinNode: 1}}},
		// Connecting after the first poll, no node may see fewer listeners than its networks first.
		"sotw after ready": {afterReady: true, want: map[string]ResourceCount{"listeners": {Total: nodes * (networks + 1), PerNode: networks + 1, MinNode: networks + 1}}},
		// cmd/xds with mutual TLS and node ids bound to the certificates' DNS names: every node
		// presents its own certificate.
		"delta over mutual TLS": {delta: true, tls: mtls, xdsArgs: xdsTLS, want: map[string]ResourceCount{"listeners": {Total: nodes, PerNode: 1, MinNode: 1}}},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := RunXDS(t.Context(), XDSOptions{
				Fleet: fleet, Delta: tc.delta, XDSBin: bin, XDSArgs: tc.xdsArgs, TLS: tc.tls,
				PollInterval: time.Second, Timeout: time.Minute, ConnectAfterReady: tc.afterReady, Dir: t.TempDir(),
				Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			if r.NotFull != 0 || r.NotChanged != 0 || r.Full.N != nodes || r.Change.N != nodes || len(r.Problems) != 0 {
				t.Errorf("not full %d, not changed %d, full %d, changed %d, problems %v; want every node both times",
					r.NotFull, r.NotChanged, r.Full.N, r.Change.N, r.Problems)
			}
			if r.NACKs != 0 || len(r.Rejected) != 0 || len(r.StreamErrors) != 0 {
				t.Errorf("NACKs %d, rejected %v, stream errors %v; want none", r.NACKs, r.Rejected, r.StreamErrors)
			}
			if tc.afterReady && r.FewerFirst != 0 {
				t.Errorf("%d nodes connecting after the first poll first got fewer listeners than their networks", r.FewerFirst)
			}
			got := map[string]ResourceCount{"listeners": r.ChangeResources["listeners"]}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("listeners received for the change (-want +got):\n%s", diff)
			}
			if tc.delta && len(r.ChangeResources) != 1 {
				t.Errorf("delta change sent %v; want only the new listener", r.ChangeResources)
			}
			if r.Mem.Listening.RSS == 0 || r.Mem.Changed.RSS == 0 || r.Mem.Peak < r.Mem.Changed.RSS || r.PollWait <= 0 || r.XDSReady <= 0 {
				t.Errorf("mem %+v, poll wait %s, ready after %s: want all measured", r.Mem, r.PollWait, r.XDSReady)
			}
			r.Print(testWriter{t})
		})
	}
}

// testWriter sends output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
