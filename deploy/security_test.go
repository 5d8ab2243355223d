package deploy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

// TestSystemdSecurity checks the security invariants of the systemd deployment: the extproc
// socket's mode and owner are set by systemd and its peers are the users Envoy runs as; cmd/xds
// serves mutual TLS from /etc/metaproxy/tls with node ids bound to certificates; Envoy's bootstrap
// and SDS files are what `xds bootstrap` and `xds sds` write for that directory.
func TestSystemdSecurity(t *testing.T) {
	sock := parseUnit(t, "systemd/metaproxy-extproc.socket")
	envoy := parseUnit(t, "systemd/metaproxy-envoy.service")
	dropIn := parseUnit(t, "systemd/metaproxy-envoy.service.d/10-migration-coexist.conf")
	xds := parseUnit(t, "systemd/metaproxy-xds.service")
	extproc := parseUnit(t, "systemd/metaproxy-extproc.service")

	if sock.one(t, "Socket", "SocketMode") != "0660" || sock.one(t, "Socket", "SocketUser") != extproc.one(t, "Service", "User") ||
		!slices.Contains(words(envoy.one(t, "Service", "SupplementaryGroups")), sock.one(t, "Socket", "SocketGroup")) {
		t.Errorf("the socket must be 0660, owned by extproc's user, group one Envoy is in")
	}
	doc := yamlDocs(t, "systemd/etc-metaproxy/extproc.yaml")[0]
	peers := strs(doc, "allowed_peers")
	for _, u := range []string{envoy.one(t, "Service", "User"), dropIn.one(t, "Service", "User")} {
		if !slices.Contains(peers, u) {
			t.Errorf("allowed_peers %v lacks %s, a user the units run Envoy as", peers, u)
		}
	}
	for _, p := range peers {
		if _, _, err := listen.ParsePeer(p); err != nil {
			t.Error(err)
		}
	}
	users, err := os.ReadFile("systemd/metaproxy.sysusers.conf")
	if err != nil || !strings.Contains(string(users), "\nu "+envoy.one(t, "Service", "User")+" ") {
		t.Errorf("metaproxy.sysusers.conf does not create %s", envoy.one(t, "Service", "User"))
	}

	args := words(xds.one(t, "Service", "ExecStart"))
	for flag, file := range map[string]string{"tls-cert": "xds.crt", "tls-key": "xds.key", "tls-client-ca": "ca.crt"} {
		if v, _ := flagValue(args, flag); v != "/etc/metaproxy/tls/"+file {
			t.Errorf("xds --%s %q, want /etc/metaproxy/tls/%s", flag, v, file)
		}
	}
	if v, ok := flagValue(args, "node-binding"); ok && v != "dns" {
		t.Errorf("xds --node-binding %s: a node's certificate must name it (dns)", v)
	}
	if slices.Contains(args, "--insecure-plaintext") {
		t.Error("xds serves plain text")
	}

	b := checkBootstrap(t, "systemd/etc-metaproxy/envoy.yaml")
	want, err := translate.UpstreamTLS(translate.EnvoyTLS{SDSDir: "/etc/metaproxy/tls", ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.GetStaticResources().GetClusters()[0].GetTransportSocket(); got.GetTypedConfig().GetTypeUrl() != want.GetTypedConfig().GetTypeUrl() ||
		string(got.GetTypedConfig().GetValue()) != string(want.GetTypedConfig().GetValue()) {
		t.Errorf("the bootstrap's xds cluster is not mutual TLS with the SDS files of /etc/metaproxy/tls")
	}
	files, err := xdscmd.SDSFiles(xdscmd.SDSOptions{Dir: "/etc/metaproxy/tls"})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		got, err := os.ReadFile(filepath.Join("systemd/etc-metaproxy/tls", name))
		if err != nil || string(got) != string(b) {
			t.Errorf("systemd/etc-metaproxy/tls/%s differs from `xds sds --sds-dir /etc/metaproxy/tls` (%v)", name, err)
		}
	}
}

// labCA runs systemd/lab-ca.sh (openssl) for node into a new directory and returns the node's
// directory of files.
func labCA(t *testing.T, node string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed: lab-ca.sh not run")
	}
	dir := t.TempDir()
	script, _ := filepath.Abs("systemd/lab-ca.sh")
	if out, err := exec.Command("sh", script, dir, node).CombinedOutput(); err != nil {
		t.Fatalf("lab-ca.sh: %v\n%s", err, out)
	}
	return filepath.Join(dir, node)
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestLabCA runs the openssl commands the docs give operators and checks what they make: every
// certificate verifies against the CA for its use, the Envoy certificate names the node, keys
// are private, and the server files load as cmd/xds and cmd/extproc load them.
func TestLabCA(t *testing.T) {
	dir := labCA(t, "network-node-1")
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	for name, tc := range map[string]struct {
		usage x509.ExtKeyUsage
		check func(*x509.Certificate) bool
	}{
		"envoy": {x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) bool { return slices.Equal(c.DNSNames, []string{"network-node-1"}) }},
		"xds": {x509.ExtKeyUsageServerAuth, func(c *x509.Certificate) bool {
			return len(c.IPAddresses) == 1 && c.IPAddresses[0].String() == "127.0.0.1"
		}},
		"extproc": {x509.ExtKeyUsageServerAuth, func(c *x509.Certificate) bool { return len(c.IPAddresses) == 1 }},
	} {
		c := readCert(t, filepath.Join(dir, name+".crt"))
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil || !tc.check(c) {
			t.Errorf("%s.crt: %v, SANs %v %v", name, err, c.DNSNames, c.IPAddresses)
		}
		if fi, err := os.Stat(filepath.Join(dir, name+".key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s.key: %v %v, want mode 0600", name, fi.Mode(), err)
		}
		if name != "envoy" {
			if err := (tlsfiles.Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), ClientCA: filepath.Join(dir, "ca.crt")}).Validate([3]string{"cert", "key", "ca"}); err != nil {
				t.Errorf("%s files do not load: %v", name, err)
			}
		}
	}
}

// installLabTLS puts the lab CA's files for node into etc/tls as the tls README installs them.
func installLabTLS(t *testing.T, etc, node string) string {
	t.Helper()
	src := labCA(t, node)
	dst := filepath.Join(etc, "tls")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "xds.crt", "xds.key", "envoy.crt", "envoy.key"} {
		copyFile(t, filepath.Join(src, f), filepath.Join(dst, f), nil)
		mode := os.FileMode(0o644)
		if strings.HasSuffix(f, ".key") {
			mode = 0o600
		}
		if err := os.Chmod(filepath.Join(dst, f), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// xdsFetch asks the cmd/xds at addr for node's listeners with the Envoy certificate in dir.
func xdsFetch(t *testing.T, addr, dir, node string) error {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "envoy.crt"), filepath.Join(dir, "envoy.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{pair}})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := sotw.NewADSClient(ctx, &corev3.Node{Id: node}, resource.ClusterType)
	if err := c.InitConnect(conn); err != nil {
		return err
	}
	_, err = c.Fetch()
	return err
}

// checkNodeBinding: with the unit's certificates, the node's own id is served, another's refused.
func checkNodeBinding(t *testing.T, addr, tlsDir, node string) {
	t.Helper()
	if err := xdsFetch(t, addr, tlsDir, node); err != nil {
		t.Errorf("xds with the node's lab certificate: %v", err)
	}
	if err := xdsFetch(t, addr, tlsDir, "another-node"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("xds with the node's certificate asking for another node: %v, want PermissionDenied", err)
	}
}

// TestKubernetesSecurity checks the security invariants of the Kubernetes manifests: cmd/xds
// serves mutual TLS from cert-manager's Certificate, whose name is the one the Envoys check; the
// Envoys' client certificate comes from another Certificate of the same CA through the SDS files
// `xds sds` writes; extproc's peers are Envoy's user; secrets are readable by their reader only.
func TestKubernetesSecurity(t *testing.T) {
	objs, _ := loadKubernetes(t)
	cert := func(name string) map[string]any {
		c := objs["Certificate/"+name]
		if c == nil {
			t.Fatalf("no cert-manager Certificate/%s", name)
		}
		issuer := objs["Issuer/"+str(c, "spec", "issuerRef", "name")]
		if issuer == nil || str(issuer, "spec", "ca", "secretName") != str(objs["Certificate/metaproxy-ca"], "spec", "secretName") {
			t.Errorf("Certificate/%s is not issued by the metaproxy CA issuer", name)
		}
		return c
	}
	xdsCert, envoyCert := cert("metaproxy-xds"), cert("metaproxy-envoy")
	if get(objs["Certificate/metaproxy-ca"], "spec", "isCA") != true {
		t.Error("Certificate/metaproxy-ca is not a CA")
	}
	if !slices.Contains(strs(xdsCert, "spec", "usages"), "server auth") || !slices.Contains(strs(envoyCert, "spec", "usages"), "client auth") {
		t.Error("the xds certificate must be for server auth, the Envoy one for client auth")
	}
	// secretFile checks that path, read by container c of pod, is key of the Secret of a Certificate.
	secretFile := func(where string, pod, c any, path, secretName, key string) {
		t.Helper()
		v, k, ok := mountedFile(pod, c, path)
		if !ok || str(v, "secret", "secretName") != secretName || k != key {
			t.Errorf("%s reads %s, which is not key %s of Secret %s", where, path, key, secretName)
		}
		if mode, _ := get(v, "secret", "defaultMode").(int); mode&0o077 != 0 {
			t.Errorf("%s: Secret %s mounted with mode %o, readable by others", where, secretName, mode)
		}
	}

	dep := get(objs["Deployment/metaproxy-xds"], "spec", "template", "spec")
	xds := container(t, dep, "xds")
	args := strs(xds, "args")
	for flag, key := range map[string]string{"tls-cert": "tls.crt", "tls-key": "tls.key", "tls-client-ca": "ca.crt"} {
		v, _ := flagValue(args, flag)
		secretFile("xds --"+flag, dep, xds, v, str(xdsCert, "spec", "secretName"), key)
	}
	if v, _ := flagValue(args, "node-binding"); v != "none" {
		t.Errorf("xds --node-binding %q: the DaemonSet shares one certificate, so it must say none (README.md)", v)
	}
	if get(dep, "securityContext", "fsGroup") != get(dep, "securityContext", "runAsGroup") {
		t.Error("xds: fsGroup must be its group, so that the key is readable by it alone")
	}

	ds := get(objs["DaemonSet/metaproxy-node"], "spec", "template", "spec")
	envoy, extproc := container(t, ds, "envoy"), container(t, ds, "extproc")
	files, err := xdscmd.SDSFiles(xdscmd.SDSOptions{Dir: "/etc/metaproxy/sds", Cert: "/etc/metaproxy/tls/tls.crt", Key: "/etc/metaproxy/tls/tls.key", CA: "/etc/metaproxy/tls/ca.crt"})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		v, key, ok := mountedFile(ds, envoy, "/etc/metaproxy/sds/"+name)
		if !ok || str(v, "configMap", "name") != "metaproxy-envoy-sds" || key != name {
			t.Errorf("Envoy's %s is not from ConfigMap metaproxy-envoy-sds", name)
		}
		got, err := os.ReadFile(filepath.Join("kubernetes/envoy-sds", name))
		if err != nil || string(got) != string(want) {
			t.Errorf("kubernetes/envoy-sds/%s differs from `xds sds` for the pod's paths (%v)", name, err)
		}
	}
	secretFile("envoy's client certificate", ds, envoy, "/etc/metaproxy/tls/tls.crt", str(envoyCert, "spec", "secretName"), "tls.crt")
	secretFile("envoy's client key", ds, envoy, "/etc/metaproxy/tls/tls.key", str(envoyCert, "spec", "secretName"), "tls.key")
	b := checkBootstrap(t, "kubernetes/envoy-bootstrap.yaml")
	if !slices.Contains(strs(xdsCert, "spec", "dnsNames"), b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()) {
		t.Errorf("xds's certificate %v does not name the address Envoy's bootstrap checks", strs(xdsCert, "spec", "dnsNames"))
	}
	if peers, _ := flagValue(strs(extproc, "args"), "allowed-peers"); get(envoy, "securityContext", "runAsUser") != 0 || peers != "root" {
		t.Errorf("extproc --allowed-peers %q, Envoy runs as %v: the peer check must allow exactly Envoy's user", peers, get(envoy, "securityContext", "runAsUser"))
	}
	if get(ds, "securityContext", "fsGroup") != get(extproc, "securityContext", "runAsGroup") {
		t.Error("node pod: fsGroup must be extproc's group, so that the shared secret is readable by it alone")
	}
}

// TestComposeSecurity checks the compose demo's secure modes: extproc on a UNIX socket whose
// peers are Envoy's user, xds in plain text only on a UNIX socket no other service shares, the
// shared secret copied in unreadable by others (an environment-sourced secret with uid and mode,
// which compose honours; a file-sourced one keeps the host file's mode).
func TestComposeSecurity(t *testing.T) {
	doc := yamlDocs(t, "compose/compose.yaml")[0]
	services, _ := doc["services"].(map[string]any)
	envoy, extproc, xds := services["envoy"], services["extproc"], services["xds"]
	if peers, _ := flagValue(strs(extproc, "command"), "allowed-peers"); peers != "root" || get(envoy, "environment", "ENVOY_UID") != "0" {
		t.Errorf("extproc --allowed-peers %q: want exactly Envoy's user, root", peers)
	}
	listen, _ := flagValue(strs(xds, "command"), "listen")
	if listen != "unix:///run/metaproxy/xds.sock" || !slices.Contains(strs(xds, "volumes"), "run-metaproxy:/run/metaproxy") {
		t.Errorf("xds --listen %q: want the UNIX socket on the volume only Envoy and extproc share", listen)
	}
	for name, s := range services {
		if slices.Contains(strs(s, "volumes"), "run-metaproxy:/run/metaproxy") && !slices.Contains([]string{"envoy", "extproc", "xds"}, name) {
			t.Errorf("%s mounts the sockets' volume", name)
		}
	}
	sec := list(extproc, "secrets")
	if len(sec) != 1 || str(sec[0], "source") != "shared-secret" || str(sec[0], "uid") != "65532" || get(sec[0], "mode") != 0o400 {
		t.Errorf("extproc's secret %v: want shared-secret, uid 65532, mode 0o400", sec)
	}
	env := parseEnvFile(t, "compose/.env")
	if env[str(doc, "secrets", "shared-secret", "environment")] == "" {
		t.Errorf("compose/.env does not set %s", str(doc, "secrets", "shared-secret", "environment"))
	}
}
