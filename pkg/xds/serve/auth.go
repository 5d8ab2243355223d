package serve

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/metaproxy/metaproxy/pkg/listen"
	"github.com/metaproxy/metaproxy/pkg/tlsfiles"
)

// NodeBinding is the rule that ties the node ids an Envoy may ask for to its TLS client
// certificate, so that a node cannot fetch another node's configuration or invent node ids:
//
//   - dns: the certificate carries a DNS subject alternative name equal to the node id (exact,
//     case-sensitive). One certificate per network node, e.g. DNS:compute-1 for node compute-1.
//   - spiffe://TRUST-DOMAIN: the certificate carries the URI SAN
//     spiffe://TRUST-DOMAIN/metaproxy/node/<node id> (a SPIFFE id, as SPIRE issues them).
//   - none: any certificate of the client CA may ask for any node id (one certificate shared by
//     every node, e.g. a Kubernetes DaemonSet's); only authenticated Envoys get configuration.
type NodeBinding struct {
	rule        string // "dns", "spiffe" or "none"
	trustDomain string
}

// SPIFFENodePath is the path of a node's SPIFFE id under its trust domain, before the node id.
const SPIFFENodePath = "/metaproxy/node/"

// ParseNodeBinding parses dns, spiffe://TRUST-DOMAIN or none.
func ParseNodeBinding(s string) (NodeBinding, error) {
	switch {
	case s == "dns" || s == "none":
		return NodeBinding{rule: s}, nil
	case strings.HasPrefix(s, "spiffe://"):
		td := strings.TrimPrefix(s, "spiffe://")
		if td == "" || strings.ContainsAny(td, "/:@?#") || strings.ToLower(td) != td {
			return NodeBinding{}, fmt.Errorf("node binding %q: want spiffe://TRUST-DOMAIN, a lower-case trust domain name", s)
		}
		return NodeBinding{rule: "spiffe", trustDomain: td}, nil
	}
	return NodeBinding{}, fmt.Errorf("node binding %q: want dns, spiffe://TRUST-DOMAIN or none", s)
}

func (b NodeBinding) String() string {
	if b.rule == "spiffe" {
		return "spiffe://" + b.trustDomain
	}
	return b.rule
}

// Binds reports whether the rule restricts node ids at all (not none).
func (b NodeBinding) Binds() bool { return b.rule != "none" }

// Allows reports whether a client with certificate cert may ask for node.
func (b NodeBinding) Allows(cert *x509.Certificate, node string) bool {
	switch b.rule {
	case "dns":
		return slices.Contains(cert.DNSNames, node)
	case "spiffe":
		want := "spiffe://" + b.trustDomain + SPIFFENodePath + node
		for _, u := range cert.URIs {
			if u.String() == want {
				return true
			}
		}
		return false
	case "none":
		return true
	}
	return false
}

// describe says what a certificate must carry for node, for error messages.
func (b NodeBinding) describe(node string) string {
	switch b.rule {
	case "dns":
		return fmt.Sprintf("a DNS subject alternative name %q", node)
	case "spiffe":
		return fmt.Sprintf("the URI subject alternative name %q", "spiffe://"+b.trustDomain+SPIFFENodePath+node)
	}
	return "nothing"
}

// NodeAuthorizer checks the node id of every DiscoveryRequest and DeltaDiscoveryRequest against
// the TLS client certificate of the connection it arrives on, before go-control-plane sees it. A
// request for a node the certificate does not name fails its stream (or call) with
// PermissionDenied, is logged (once per client certificate and minute) and counted.
type NodeAuthorizer struct {
	binding  NodeBinding
	refusals *listen.Refusals
}

// NewNodeAuthorizer returns a NodeAuthorizer applying binding.
func NewNodeAuthorizer(binding NodeBinding, refusals *listen.Refusals) *NodeAuthorizer {
	return &NodeAuthorizer{binding: binding, refusals: refusals}
}

// ServerOptions returns the interceptors that apply a to every xDS stream and call.
func (a *NodeAuthorizer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainStreamInterceptor(a.stream), grpc.ChainUnaryInterceptor(a.unary)}
}

func (a *NodeAuthorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	cert, err := clientCert(ss.Context())
	if err != nil {
		return err
	}
	as := &authStream{ServerStream: ss, a: a, cert: cert, method: info.FullMethod}
	if err := handler(srv, as); as.denied != nil {
		return as.denied // go-control-plane ends the stream quietly when Recv fails; say why
	} else if err != nil {
		return err
	}
	return nil
}

func (a *NodeAuthorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if node, ok := nodeOf(req); ok {
		cert, err := clientCert(ctx)
		if err != nil {
			return nil, err
		}
		if err := a.check(cert, "", node, info.FullMethod); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// authStream checks the requests received on one stream. The first must name a node; later ones
// may omit it (Envoy's set_node_on_first_message_only) but not change it.
type authStream struct {
	grpc.ServerStream
	a      *NodeAuthorizer
	cert   *x509.Certificate
	method string
	node   string
	denied error
}

func (s *authStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	node, ok := nodeOf(m)
	if !ok {
		return nil
	}
	if err := s.a.check(s.cert, s.node, node, s.method); err != nil {
		s.denied = err
		return err
	}
	if node.GetId() != "" {
		s.node = node.GetId()
	}
	return nil
}

// nodeOf returns the node of an xDS request, and whether m is one.
func nodeOf(m any) (*corev3.Node, bool) {
	switch r := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		return r.GetNode(), true
	case *discoveryv3.DeltaDiscoveryRequest:
		return r.GetNode(), true
	}
	return nil, false
}

// check decides one request: bound is the node id of the stream so far ("" before its first).
func (a *NodeAuthorizer) check(cert *x509.Certificate, bound string, node *corev3.Node, method string) error {
	id := node.GetId()
	var why string
	switch {
	case id == "" && bound != "":
		return nil
	case id == "":
		why = "the first request of a stream names no node id"
	case bound != "" && id != bound:
		why = fmt.Sprintf("node id changed from %q to %q within the stream", bound, id)
	case !a.binding.Allows(cert, id):
		why = fmt.Sprintf("node id %q is not named by the client certificate (rule %s: it must carry %s; it has %v)", id, a.binding, a.binding.describe(id), tlsfiles.SANs(cert))
	default:
		return nil
	}
	a.refusals.Refuse(certName(cert), listen.ReasonNodeID, "xDS request refused", "node", id, "method", method, "why", why)
	return status.Error(codes.PermissionDenied, why)
}

// clientCert returns the verified TLS client certificate of the connection of ctx.
func clientCert(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			return ti.State.VerifiedChains[0][0], nil
		}
	}
	return nil, status.Error(codes.Unauthenticated, "no verified TLS client certificate")
}

// certName names a client certificate in logs: its subject alternative names, else its subject.
func certName(c *x509.Certificate) string {
	if sans := tlsfiles.SANs(c); len(sans) > 0 {
		return "certificate " + strings.Join(sans, ",")
	}
	return "certificate " + c.Subject.String()
}
