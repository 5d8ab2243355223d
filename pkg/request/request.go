// Package request decodes what Envoy's ext_proc filter tells cmd/extproc about one VM request into a
// resolve.Query: the Neutron network or router from the stream's gRPC initial metadata (set per
// listener by cmd/xds) and the VM address from the `source.address` request attribute. Nothing a VM
// can write (its HTTP headers, its body) is ever read here.
package request

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// Error is a request that cannot be answered, with the HTTP status the VM gets and a message that
// is safe to show it.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

func badRequest(format string, a ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Message: fmt.Sprintf(format, a...)}
}

// misconfigured is a listener whose ext_proc filter does not send what cmd/xds configures: it is
// not the VM's fault, so it is a 500.
func misconfigured(format string, a ...any) *Error {
	return &Error{Status: http.StatusInternalServerError, Message: fmt.Sprintf(format, a...)}
}

// Decode returns the query of one request_headers message of the stream whose context is ctx: the
// scope from the stream's initial metadata (gRPC's incoming metadata in ctx), the VM address from
// req. Every error is an *Error.
func Decode(ctx context.Context, req *extprocv3.ProcessingRequest) (resolve.Query, error) {
	scope, err := Scope(ctx)
	if err != nil {
		return resolve.Query{}, err
	}
	addr, err := SourceAddr(req)
	if err != nil {
		return resolve.Query{}, err
	}
	return resolve.Query{Scope: scope, Addr: addr}, nil
}

// Scope reads the network or router id from the stream's initial metadata, which ctx carries:
// exactly one of the two keys, with exactly one value, must be present (as neutron-metadata-agent
// answers 400 otherwise). Only these two keys are read (not a copy of the whole metadata).
func Scope(ctx context.Context) (resolve.Scope, error) {
	nets, routers := metadata.ValueFromIncomingContext(ctx, contract.NetworkIDMetadata), metadata.ValueFromIncomingContext(ctx, contract.RouterIDMetadata)
	switch {
	case len(nets) > 0 && len(routers) > 0:
		return resolve.Scope{}, badRequest("both a network id and a router id were given")
	case len(nets) == 0 && len(routers) == 0:
		return resolve.Scope{}, badRequest("no network id or router id: the listener's ext_proc filter must set %s or %s",
			contract.NetworkIDMetadata, contract.RouterIDMetadata)
	case len(nets) > 1 || len(routers) > 1:
		return resolve.Scope{}, badRequest("more than one network or router id was given")
	}
	s := resolve.Scope{Kind: resolve.KindNetwork}
	if len(nets) == 1 {
		s.ID = nets[0]
	} else {
		s.Kind, s.ID = resolve.KindRouter, routers[0]
	}
	if !contract.ValidID(s.ID) {
		return resolve.Scope{}, badRequest("%s id %q is not a Neutron id", s.Kind, truncate(s.ID, 2*contract.MaxIDLen))
	}
	return s, nil
}

// SourceAddr reads the VM address from the request attribute source.address ("ip:port", IPv6 as
// "[addr]:port"). An IPv4-mapped IPv6 address is returned as IPv4 and a zone is dropped, as
// neutron-metadata-agent does.
func SourceAddr(req *extprocv3.ProcessingRequest) (netip.Addr, error) {
	attrs := req.GetAttributes()[contract.ExtProcAttributesKey]
	v, ok := attrs.GetFields()[contract.SourceAddressAttribute]
	if !ok {
		return netip.Addr{}, misconfigured("no %s request attribute: the listener's ext_proc filter must request it",
			contract.SourceAddressAttribute)
	}
	raw := v.GetStringValue()
	ap, err := netip.ParseAddrPort(raw)
	var a netip.Addr
	if err == nil {
		a = ap.Addr()
	} else if a, err = netip.ParseAddr(raw); err != nil {
		return netip.Addr{}, misconfigured("source address %q is not ip:port", truncate(raw, 64))
	}
	a = resolve.NormalizeAddr(a)
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, misconfigured("source address %s cannot be a VM", a)
	}
	return a, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
