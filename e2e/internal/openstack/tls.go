//go:build e2e

package openstack

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"
)

// privateCA is the fixture's certificate authority: Keystone and neutron-server serve HTTPS with a
// certificate it signed, and clients trust it through clouds.yaml's cacert, as an operator with a
// private CA configures them. Files: tls/ca.pem, tls/server.pem, tls/server.key under BaseDir.
type privateCA struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
}

// newPrivateCA writes a new CA and a server certificate for 127.0.0.1 and localhost, valid for a
// day, under dir.
func newPrivateCA(dir string) (*privateCA, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("openstack: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("openstack: CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "metaproxy e2e private CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("openstack: CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("openstack: CA certificate: %w", err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("openstack: server key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("openstack: server certificate: %w", err)
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return nil, fmt.Errorf("openstack: server key: %w", err)
	}
	ca := &privateCA{caFile: dir + "/ca.pem", certFile: dir + "/server.pem", keyFile: dir + "/server.key", pool: x509.NewCertPool()}
	ca.pool.AddCert(caCert)
	for path, block := range map[string]*pem.Block{
		ca.caFile:   {Type: "CERTIFICATE", Bytes: caDER},
		ca.certFile: {Type: "CERTIFICATE", Bytes: srvDER},
		ca.keyFile:  {Type: "EC PRIVATE KEY", Bytes: srvKeyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, fmt.Errorf("openstack: %w", err)
		}
	}
	return ca, nil
}

// httpClient is an HTTP client that trusts only the CA.
func (ca *privateCA) httpClient(timeout time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Timeout: timeout, Transport: t}
}
