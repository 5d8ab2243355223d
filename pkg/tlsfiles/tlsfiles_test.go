package tlsfiles_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles/tlstest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// pki is a server's files in a directory, and the CA behind them.
type pki struct {
	dir   string
	ca    *tlstest.CA
	files tlsfiles.Files
}

func newPKI(t *testing.T, name string) *pki {
	dir := t.TempDir()
	p := &pki{dir: dir, ca: tlstest.NewCA(t, name)}
	p.files.Cert, p.files.Key = p.ca.Issue(t, tlstest.Leaf{CommonName: "server", DNS: []string{"server.test"}, Server: true}).Write(t, dir, "server")
	p.files.ClientCA = p.ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
	return p
}

// rotate replaces the server's files by a new CA's, as a rotation does (files renamed into place).
func (p *pki) rotate(t *testing.T, name string) {
	p.ca = tlstest.NewCA(t, name)
	p.ca.Issue(t, tlstest.Leaf{CommonName: "server", DNS: []string{"server.test"}, Server: true}).Write(t, p.dir, "server")
	p.ca.WritePEM(t, p.files.ClientCA)
}

// serve runs a gRPC health server with s's credentials and returns its address and the handshake
// errors it reported.
func serve(t *testing.T, s *tlsfiles.Server) (string, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var rejected []string
	g := grpc.NewServer(grpc.Creds(s.Credentials(func(_ net.Addr, err error) {
		mu.Lock()
		rejected = append(rejected, err.Error())
		mu.Unlock()
	})))
	healthpb.RegisterHealthServer(g, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String(), func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), rejected...) }
}

// check makes a fresh connection with cfg and one health check.
func check(addr string, cfg *tls.Config) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	return err
}

func client(t *testing.T, trust *tlstest.CA, cert *tlstest.Issued) *tls.Config {
	cfg := &tls.Config{RootCAs: trust.Pool(), ServerName: "server.test"}
	if cert != nil {
		// Always present the certificate, as Envoy does (Go's client would otherwise send none when
		// it does not chain to a CA the server names).
		c := cert.TLS(t)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	return cfg
}

func TestMutualTLSRefusesWhatItMust(t *testing.T) {
	p := newPKI(t, "lab CA")
	other := tlstest.NewCA(t, "another CA")
	s, err := tlsfiles.NewServer(p.files, tlsfiles.Options{AllowedSANs: []string{"envoy.node-1", "spiffe://lab/metaproxy/node/node-2", "2001:DB8:0::7"}})
	if err != nil {
		t.Fatal(err)
	}
	addr, rejected := serve(t, s)
	good := p.ca.Issue(t, tlstest.Leaf{DNS: []string{"envoy.node-1"}, Client: true})
	byURI := p.ca.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://lab/metaproxy/node/node-2"}, Client: true})
	byIP := p.ca.Issue(t, tlstest.Leaf{IPs: []string{"2001:db8::7"}, Client: true}) // allowed as 2001:DB8:0::7
	foreign := other.Issue(t, tlstest.Leaf{DNS: []string{"envoy.node-1"}, Client: true})
	wrongSAN := p.ca.Issue(t, tlstest.Leaf{DNS: []string{"somebody-else"}, Client: true})
	expired := p.ca.Issue(t, tlstest.Leaf{DNS: []string{"envoy.node-1"}, Client: true, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})

	for name, tc := range map[string]struct {
		cfg  *tls.Config
		want string // in the server's handshake error; "" = accepted
	}{
		"allowed DNS SAN":           {cfg: client(t, p.ca, &good)},
		"allowed URI SAN":           {cfg: client(t, p.ca, &byURI)},
		"allowed IP SAN":            {cfg: client(t, p.ca, &byIP)},
		"no client certificate":     {cfg: client(t, p.ca, nil), want: "client didn't provide a certificate"},
		"certificate of another CA": {cfg: client(t, p.ca, &foreign), want: "unknown authority"},
		"SAN not allowed":           {cfg: client(t, p.ca, &wrongSAN), want: "none of the allowed subject alternative names"},
		"expired certificate":       {cfg: client(t, p.ca, &expired), want: "expired"},
	} {
		t.Run(name, func(t *testing.T) {
			before := len(rejected())
			err := check(addr, tc.cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			// The client can see the handshake fail before the server has reported it (with TLS
			// 1.3 the server checks the client's certificate after the client finished): wait.
			waitFor(t, func() bool { return len(rejected()) > before })
			got := rejected()
			if len(got) != before+1 || !strings.Contains(got[len(got)-1], tc.want) {
				t.Errorf("server reported %v, want one handshake error saying %q", got[before:], tc.want)
			}
		})
	}
	t.Run("plain text", func(t *testing.T) {
		before := len(rejected())
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Close()
		if strings.Contains(string(buf[:n]), "\x00\x00") {
			t.Errorf("a plain-text client got an HTTP/2 answer: %q", buf[:n])
		}
		waitFor(t, func() bool { return len(rejected()) == before+1 })
	})
}

// TestRotationWithoutRestart replaces the server's certificate, key and client CA by a new CA's
// while it runs: the next handshake uses them (clients of the new CA get in, those of the old one
// do not), with no restart.
func TestRotationWithoutRestart(t *testing.T) {
	p := newPKI(t, "CA 1")
	logs := &syncBuffer{}
	s, err := tlsfiles.NewServer(p.files, tlsfiles.Options{Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, s)
	old := p.ca
	oldClient := old.Issue(t, tlstest.Leaf{DNS: []string{"envoy"}, Client: true})
	if err := check(addr, client(t, old, &oldClient)); err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	p.rotate(t, "CA 2")
	newClient := p.ca.Issue(t, tlstest.Leaf{DNS: []string{"envoy"}, Client: true})
	if err := check(addr, client(t, p.ca, &newClient)); err != nil {
		t.Fatalf("after rotation, a client of the new CA: %v", err)
	}
	if err := check(addr, client(t, old, &oldClient)); err == nil {
		t.Fatal("after rotation, a client of the old CA still got in")
	}
	if !strings.Contains(logs.String(), "TLS files reloaded") {
		t.Errorf("no reload logged:\n%s", logs)
	}

	// A rotation half done (the key of another certificate) does not load: the last good set stays.
	stray := p.ca.Issue(t, tlstest.Leaf{DNS: []string{"x"}})
	tlstest.WriteFile(t, p.files.Key, stray.KeyPEM, 0o600)
	if err := check(addr, client(t, p.ca, &newClient)); err != nil {
		t.Fatalf("with a mismatched key written, the previous set should stay: %v", err)
	}
	if !strings.Contains(logs.String(), "do not load") {
		t.Errorf("the broken set is not logged:\n%s", logs)
	}
}

func TestValidateListsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "lab")
	expired := ca.Issue(t, tlstest.Leaf{DNS: []string{"x"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	cert, key := expired.Write(t, dir, "expired")
	os.Chmod(key, 0o644)
	notCA := filepath.Join(dir, "ca.crt")
	os.WriteFile(notCA, []byte("not a certificate"), 0o644)
	flags := [3]string{"--tls-cert", "--tls-key", "--tls-client-ca"}

	err := tlsfiles.Files{Cert: cert, Key: key, ClientCA: notCA}.Validate(flags)
	for _, want := range []string{"--tls-key", "chmod", "--tls-client-ca", "no PEM certificate"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	os.Chmod(key, 0o600)
	if err := (tlsfiles.Files{Cert: cert, Key: key, ClientCA: ca.WritePEM(t, notCA)}).Validate(flags); err == nil || !strings.Contains(err.Error(), "expired on") {
		t.Errorf("expired certificate: %v", err)
	}
	err = tlsfiles.Files{Cert: filepath.Join(dir, "missing.crt"), ClientCA: notCA}.Validate(flags)
	for _, want := range []string{"--tls-cert", "no such file", "--tls-key is not set"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	other := ca.Issue(t, tlstest.Leaf{DNS: []string{"y"}})
	good := ca.Issue(t, tlstest.Leaf{DNS: []string{"x"}})
	c2, _ := good.Write(t, dir, "good")
	_, k2 := other.Write(t, dir, "other")
	if err := (tlsfiles.Files{Cert: c2, Key: k2, ClientCA: notCA}).Validate(flags); err == nil || !strings.Contains(err.Error(), "private key does not match") {
		t.Errorf("key of another certificate: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRotationThroughKubernetesDataLink rotates the files the way the kubelet updates a Secret
// volume (AtomicWriter): every file is a link through ..data to a timestamped directory, and a
// rotation writes a new directory and renames a new ..data link over the old one. The next
// handshake uses the new set, although no path the server was given changed.
func TestRotationThroughKubernetesDataLink(t *testing.T) {
	vol := t.TempDir()
	generation := func(name string, ca *tlstest.CA) {
		t.Helper()
		dir := filepath.Join(vol, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		ca.Issue(t, tlstest.Leaf{DNS: []string{"server.test"}, Server: true}).Write(t, dir, "tls")
		ca.WritePEM(t, filepath.Join(dir, "ca.crt"))
		tmp := filepath.Join(vol, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	ca1, ca2 := tlstest.NewCA(t, "CA 1"), tlstest.NewCA(t, "CA 2")
	generation("..2026_01_01", ca1)
	var files tlsfiles.Files
	for _, f := range []struct {
		p    *string
		name string
	}{{&files.Cert, "tls.crt"}, {&files.Key, "tls.key"}, {&files.ClientCA, "ca.crt"}} {
		*f.p = filepath.Join(vol, f.name)
		if err := os.Symlink(filepath.Join("..data", f.name), *f.p); err != nil {
			t.Fatal(err)
		}
	}
	s, err := tlsfiles.NewServer(files, tlsfiles.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, s)
	c1, c2 := ca1.Issue(t, tlstest.Leaf{DNS: []string{"envoy"}, Client: true}), ca2.Issue(t, tlstest.Leaf{DNS: []string{"envoy"}, Client: true})
	if err := check(addr, client(t, ca1, &c1)); err != nil {
		t.Fatalf("before the swap: %v", err)
	}
	generation("..2026_02_01", ca2)
	if err := check(addr, client(t, ca2, &c2)); err != nil {
		t.Fatalf("after the ..data swap, a client of the new CA: %v", err)
	}
	if err := check(addr, client(t, ca1, &c1)); err == nil {
		t.Fatal("after the ..data swap, a client of the old CA still got in")
	}
}
