package load

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// NodePlaceholder in ClientTLS.Cert and Key stands for the node id, for a control plane that binds
// every node id to its own certificate.
const NodePlaceholder = "{node}"

// ClientTLS is how the simulated Envoys authenticate to cmd/xds and verify it. Zero: plaintext, which
// is what cmd/xds accepts without TLS configured.
type ClientTLS struct {
	// CA is the PEM file of the CA that signed cmd/xds's server certificate.
	CA string
	// Cert and Key are the PEM client certificate and key; NodePlaceholder in them is replaced by
	// each node's id.
	Cert, Key string
	// ServerName overrides the name checked in the server certificate (default: the dialed host).
	ServerName string
}

// Enabled reports whether any TLS setting is given.
func (t ClientTLS) Enabled() bool {
	return t.CA != "" || t.Cert != "" || t.Key != "" || t.ServerName != ""
}

// Validate reports every problem at once.
func (t ClientTLS) Validate() error {
	var errs []error
	if t.Enabled() && t.CA == "" {
		errs = append(errs, errors.New("--tls-ca is required with TLS: the CA that signed cmd/xds's certificate"))
	}
	if (t.Cert == "") != (t.Key == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	return errors.Join(errs...)
}

// clientCredentials returns a function giving each node's transport credentials.
func (t ClientTLS) clientCredentials() (func(node string) (credentials.TransportCredentials, error), error) {
	if !t.Enabled() {
		return func(string) (credentials.TransportCredentials, error) { return insecure.NewCredentials(), nil }, nil
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls ca %s: no PEM certificate in it", t.CA)
	}
	load := func(node string) ([]tls.Certificate, error) {
		if t.Cert == "" {
			return nil, nil
		}
		cert, key := strings.ReplaceAll(t.Cert, NodePlaceholder, node), strings.ReplaceAll(t.Key, NodePlaceholder, node)
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("client certificate of %s: %w", node, err)
		}
		return []tls.Certificate{c}, nil
	}
	perNode := strings.Contains(t.Cert+t.Key, NodePlaceholder)
	var shared []tls.Certificate
	if !perNode {
		if shared, err = load(""); err != nil {
			return nil, err
		}
	}
	return func(node string) (credentials.TransportCredentials, error) {
		certs := shared
		if perNode {
			var err error
			if certs, err = load(node); err != nil {
				return nil, err
			}
		}
		return credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: certs, ServerName: t.ServerName, MinVersion: tls.VersionTLS12}), nil
	}, nil
}
