// Package tlsfiles is the TLS of metaproxy's gRPC servers (cmd/xds, and cmd/extproc on TCP):
// mutual TLS from PEM files (a server certificate and key, the CAs that sign client
// certificates), re-read when they change so that certificates rotate without a restart, and an
// optional allow-list of client subject alternative names.
//
// Rotation: before every handshake the three files are stat(2)ed; when one's size, modification
// time or inode changed (a rewrite, or a rename into place as cert-manager, Kubernetes' ..data
// links and `install` do), all three are read again and used from that handshake on. A set that
// does not load (a key written before its certificate) is logged and the previous one stays, so a
// rotation half done never takes the service down. Connections already open keep their session.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/metaproxy/metaproxy/pkg/secretfile"
)

// Files are the PEM files of a server: its certificate chain and private key, and the bundle of
// CAs that client certificates must chain to.
type Files struct {
	Cert, Key, ClientCA string
}

// Given reports whether any file is named (Validate then wants all three).
func (f Files) Given() bool { return f.Cert != "" || f.Key != "" || f.ClientCA != "" }

// Validate loads the files as the server would and returns every problem at once: missing or
// unreadable files, a key others may read (package secretfile), a key that is not the
// certificate's, a certificate outside its validity period, a CA file without a certificate.
// flags names the options the files come from, for the messages (cert, key, client CA).
func (f Files) Validate(flags [3]string) error {
	_, err := load(f, flags, time.Now())
	return err
}

// material is one loaded set of files.
type material struct {
	cert  tls.Certificate
	pool  *x509.CertPool
	stamp [3]stamp
}

// stamp identifies a version of a file.
type stamp struct {
	size, ino int64
	mtime     time.Time
}

func stampOf(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	s := stamp{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = int64(st.Ino)
	}
	return s, nil
}

func load(f Files, flags [3]string, now time.Time) (*material, error) {
	var errs []error
	m := &material{}
	ok := [3]bool{}
	for i, p := range []string{f.Cert, f.Key, f.ClientCA} {
		if p == "" {
			errs = append(errs, fmt.Errorf("%s is not set", flags[i]))
			continue
		}
		st, err := stampOf(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flags[i], err))
			continue
		}
		m.stamp[i], ok[i] = st, true
	}
	var certPEM, keyPEM []byte
	var err error
	if ok[0] {
		if certPEM, err = os.ReadFile(f.Cert); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flags[0], err))
		}
	}
	if ok[1] {
		if keyPEM, err = secretfile.Read(f.Key); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flags[1], err))
		}
	}
	if certPEM != nil && keyPEM != nil {
		m.cert, err = tls.X509KeyPair(certPEM, keyPEM)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s %s and %s %s: %w", flags[0], f.Cert, flags[1], f.Key, err))
		case now.Before(m.cert.Leaf.NotBefore):
			errs = append(errs, fmt.Errorf("%s %s is not valid before %s", flags[0], f.Cert, m.cert.Leaf.NotBefore.UTC().Format(time.RFC3339)))
		case now.After(m.cert.Leaf.NotAfter):
			errs = append(errs, fmt.Errorf("%s %s expired on %s", flags[0], f.Cert, m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	if ok[2] {
		if caPEM, err := os.ReadFile(f.ClientCA); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flags[2], err))
		} else if m.pool, err = caPool(caPEM); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", flags[2], f.ClientCA, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return m, nil
}

// caPool parses a PEM bundle of CA certificates; anything else in it is an error.
func caPool(b []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q, want only CERTIFICATE blocks", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

// Options tune a Server.
type Options struct {
	// AllowedSANs, when not empty, is the allow-list of client certificates: the leaf must carry
	// one of them as a DNS name, URI, IP address or e-mail address (exact, case-sensitive
	// comparison of the SAN's text form; IP addresses compared as addresses).
	AllowedSANs []string
	// Flags name the options the files come from in messages (default: cert, key, client CA).
	Flags [3]string
	// Log receives reload events.
	Log *slog.Logger
}

// Server serves TLS from Files, reloading them when they change.
type Server struct {
	files Files
	o     Options
	now   func() time.Time

	mu     sync.Mutex
	cur    *material
	failed [3]stamp // the stamps of the last set that failed to load, logged once
}

// NewServer loads f (Validate's checks) and returns a Server that keeps it current.
func NewServer(f Files, o Options) (*Server, error) {
	if o.Flags == ([3]string{}) {
		o.Flags = [3]string{"cert", "key", "client CA"}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	// A SAN's IP address is compared in its canonical text form (net.IP.String, which is how SANs
	// prints it), so an allowed address may be written in any form netip parses.
	o.AllowedSANs = slices.Clone(o.AllowedSANs)
	for i, san := range o.AllowedSANs {
		if a, err := netip.ParseAddr(san); err == nil {
			o.AllowedSANs[i] = a.Unmap().String()
		}
	}
	s := &Server{files: f, o: o, now: time.Now}
	m, err := load(f, o.Flags, s.now())
	if err != nil {
		return nil, err
	}
	s.cur = m
	return s, nil
}

// Config returns the server's tls.Config: client certificates are required and verified against
// the client CAs, TLS 1.2 at least, and the certificate and CAs are those of the files as they are
// at each handshake.
func (s *Server) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.current()
			return &tls.Config{
				MinVersion:       tls.VersionTLS12,
				Certificates:     []tls.Certificate{m.cert},
				ClientCAs:        m.pool,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				VerifyConnection: s.verifySANs,
			}, nil
		},
	}
}

// current returns the loaded material, reloading it first when a file changed.
func (s *Server) current() *material {
	var now [3]stamp
	for i, p := range []string{s.files.Cert, s.files.Key, s.files.ClientCA} {
		now[i], _ = stampOf(p) // a file gone for a moment reads as changed; load then fails and the old set stays
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now == s.cur.stamp || now == s.failed {
		return s.cur
	}
	m, err := load(s.files, s.o.Flags, s.now())
	if err != nil {
		s.failed = now
		s.o.Log.Error("TLS files changed but do not load; the previous certificate stays in use until they do",
			"cert", s.files.Cert, "key", s.files.Key, "client_ca", s.files.ClientCA, "error", err)
		return s.cur
	}
	m.stamp = now
	s.cur, s.failed = m, [3]stamp{}
	s.o.Log.Info("TLS files reloaded", "cert", s.files.Cert, "not_after", m.cert.Leaf.NotAfter, "client_ca", s.files.ClientCA)
	return m
}

// verifySANs applies Options.AllowedSANs to a verified client certificate.
func (s *Server) verifySANs(cs tls.ConnectionState) error {
	if len(s.o.AllowedSANs) == 0 {
		return nil
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no client certificate")
	}
	leaf := cs.PeerCertificates[0]
	for _, san := range SANs(leaf) {
		if slices.Contains(s.o.AllowedSANs, san) {
			return nil
		}
	}
	return fmt.Errorf("client certificate %q has none of the allowed subject alternative names %v (it has %v)", leaf.Subject.CommonName, s.o.AllowedSANs, SANs(leaf))
}

// SANs returns the subject alternative names of c as text: DNS names, URIs, IP addresses and
// e-mail addresses.
func SANs(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return append(out, c.EmailAddresses...)
}

// Credentials returns gRPC server credentials over s. onReject, when not nil, is told of every
// failed handshake (a client without a certificate, with one from another CA or with a SAN not
// allowed, or not speaking TLS), with the client's address.
func (s *Server) Credentials(onReject func(remote net.Addr, err error)) credentials.TransportCredentials {
	return rejecting{TransportCredentials: credentials.NewTLS(s.Config()), onReject: onReject}
}

// rejecting reports failed server handshakes.
type rejecting struct {
	credentials.TransportCredentials
	onReject func(net.Addr, error)
}

func (r rejecting) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := r.TransportCredentials.ServerHandshake(raw)
	if err != nil && r.onReject != nil {
		r.onReject(raw.RemoteAddr(), err)
	}
	return conn, info, err
}

func (r rejecting) Clone() credentials.TransportCredentials {
	return rejecting{TransportCredentials: r.TransportCredentials.Clone(), onReject: r.onReject}
}
