//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
)

// labPKI is the suite's certificates, laid out as docs/operations.md has operators lay them out:
// a lab CA (made with crypto/x509 here; deploy/systemd/lab-ca.sh makes the same with openssl),
// cmd/xds's certificate, cmd/extproc's for TCP, and the node's Envoy directory (its own
// certificate, whose DNS name is its node id, the CA, and the SDS files `xds sds` writes).
type labPKI struct {
	ca *tlstest.CA
	// caFile signs every certificate here: cmd/xds and cmd/extproc verify Envoy with it, Envoy
	// verifies them with it.
	caFile                  string
	xdsCert, xdsKey         string
	extprocCert, extprocKey string
	envoyDir                string // the node's /etc/metaproxy/tls
}

func newLabPKI(t *testing.T, dir, bin, node string) *labPKI {
	t.Helper()
	p := &labPKI{ca: tlstest.NewCA(t, "metaproxy e2e lab CA"), envoyDir: filepath.Join(dir, "envoy-tls")}
	if err := os.MkdirAll(p.envoyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.caFile = p.ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	p.xdsCert, p.xdsKey = p.ca.Issue(t, tlstest.Leaf{CommonName: "metaproxy xds", IPs: []string{"127.0.0.1"}, Server: true}).Write(t, dir, "xds")
	p.extprocCert, p.extprocKey = p.ca.Issue(t, tlstest.Leaf{CommonName: "metaproxy extproc", IPs: []string{"127.0.0.1"}, Server: true}).Write(t, dir, "extproc")
	p.nodeCert(t, p.envoyDir, node)
	return p
}

// nodeCert gives the Envoy directory dir the certificate of node and the SDS files naming it.
func (p *labPKI) nodeCert(t *testing.T, dir, node string) {
	t.Helper()
	p.ca.Issue(t, tlstest.Leaf{CommonName: "envoy " + node, DNS: []string{node}, Client: true}).Write(t, dir, "envoy")
	p.ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
}

// writeSDS runs `xds sds` for the Envoy directory, as the install guide does.
func (p *labPKI) writeSDS(t *testing.T, bin string) {
	t.Helper()
	if out, err := exec.Command(filepath.Join(bin, "xds"), "sds", "--sds-dir", p.envoyDir).CombinedOutput(); err != nil {
		t.Fatalf("xds sds: %v\n%s", err, out)
	}
}

// xdsArgs are cmd/xds's flags for mutual TLS with node ids bound to DNS names (the default rule),
// and for sending Envoy to a TCP cmd/extproc with the node's certificate.
func (p *labPKI) xdsArgs() []string {
	return []string{"--tls-cert", p.xdsCert, "--tls-key", p.xdsKey, "--tls-client-ca", p.caFile, "--envoy-sds-dir", p.envoyDir}
}

// extprocTCPArgs are cmd/extproc's flags for TCP with mutual TLS at addr.
func (p *labPKI) extprocTCPArgs(addr string) []string {
	return []string{"--listen", addr, "--tls-cert", p.extprocCert, "--tls-key", p.extprocKey, "--tls-client-ca", p.caFile}
}

// startDataPlane writes the node's bootstrap with `xds bootstrap` (ADS over mutual TLS to the
// cmd/xds at xdsAddr, TLS from the SDS files) and starts Envoy on it when ENVOY_BIN is set, else
// the stand-in on the very same file.
func startDataPlane(t *testing.T, dir, bin string, pki *labPKI, xdsAddr string, adminPort int) *proc {
	t.Helper()
	pki.writeSDS(t, bin)
	boot := filepath.Join(dir, "envoy.yaml")
	out, err := exec.Command(filepath.Join(bin, "xds"), "bootstrap", "--node-id", nodeID, "--xds-address", xdsAddr,
		"--admin-port", strconv.Itoa(adminPort), "--sds-dir", pki.envoyDir).Output()
	if err != nil {
		t.Fatalf("xds bootstrap: %v", err)
	}
	writeFile(t, boot, string(out))
	if envoy := os.Getenv("ENVOY_BIN"); envoy != "" {
		t.Logf("data plane: Envoy (%s)", envoy)
		return startProc(t, dir, "envoy", nil, envoy, "-c", boot, "--base-id", strconv.Itoa(adminPort))
	}
	t.Logf("data plane: the test-only Envoy stand-in on the same bootstrap (set ENVOY_BIN to use Envoy)")
	return startProc(t, dir, "standin", nil, filepath.Join(bin, "standin"), "-c", boot)
}
