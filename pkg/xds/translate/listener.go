package translate

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/resolve"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// ipVersion is 4 or 6.
type ipVersion int

// Linux socket option numbers for SO_BINDTODEVICE (asm-generic/socket.h, the same on x86 and arm).
const (
	solSocket      = 1
	soBindToDevice = 25
)

// ListenerName returns the deterministic listener name metadata-<kind>-<id>-ipv4 / -ipv6.
func ListenerName(kind resolve.Kind, id string, v int) string {
	return fmt.Sprintf("metadata-%s-%s-ipv%d", kind, id, v)
}

// listeners returns the IPv4 listener of n and, when n.Interface is known, the IPv6 one.
func (sh *Shared) listeners(n source.Network) ([]*listenerv3.Listener, error) {
	if !contract.ValidID(n.ID) {
		return nil, fmt.Errorf("invalid id %q", n.ID)
	}
	if n.NamespacePath == "" {
		return nil, fmt.Errorf("no namespace path")
	}
	if n.Interface != "" && !source.ValidInterface(n.Interface) {
		return nil, fmt.Errorf("invalid interface name %q", n.Interface)
	}
	extProc, err := extProcFilter(n, sh.settings.ExtProc)
	if err != nil {
		return nil, err
	}
	versions := []ipVersion{4}
	if n.Interface != "" {
		versions = append(versions, 6)
	}
	out := make([]*listenerv3.Listener, 0, len(versions))
	statPrefix := fmt.Sprintf("metadata-%s-%s", n.Kind, n.ID)
	var hcm *anypb.Any
	var hcmRateLimit *anypb.Any
	for i, v := range versions {
		name := ListenerName(n.Kind, n.ID, int(v))
		if i == 0 || sh.rateLimit[v] != hcmRateLimit {
			hcmRateLimit = sh.rateLimit[v]
			hcm, err = httpConnectionManager(statPrefix, sh.settings.Timeouts, hcmRateLimit, extProc, sh.router, sh.tracing)
			if err != nil {
				return nil, err
			}
		}
		l := listener(name, n, v, hcm)
		if err := validate(l); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// listener binds name on the metadata address of version v inside n's namespace.
//
// freebind is set because the metadata address may not be configured yet when Envoy receives the
// listener (Neutron adds 169.254.169.254 and fe80::a9fe:a9fe after creating the namespace, and the
// IPv6 address is "tentative" until DAD completes); a failed bind would never be retried because the
// snapshot version only changes with content. The IPv6 listener is bound to the DHCP port's
// interface with SO_BINDTODEVICE before bind(): Linux refuses to bind a link-local address without
// an interface (EINVAL), and Envoy's SocketAddress has no scope id. This is what haproxy's
// `bind fe80::a9fe:a9fe:80 interface <dev>` does in neutron's metadata driver.
func listener(name string, n source.Network, v ipVersion, hcm *anypb.Any) *listenerv3.Listener {
	ip := contract.MetadataIPv4
	if v == 6 {
		ip = contract.MetadataIPv6
	}
	l := &listenerv3.Listener{
		Name:       name,
		StatPrefix: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Protocol:                 corev3.SocketAddress_TCP,
			Address:                  ip,
			PortSpecifier:            &corev3.SocketAddress_PortValue{PortValue: contract.MetadataPort},
			NetworkNamespaceFilepath: n.NamespacePath,
		}}},
		Freebind:         wrapperspb.Bool(true),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
			}},
		}},
	}
	if v == 6 {
		l.SocketOptions = []*corev3.SocketOption{{
			Description: "SO_BINDTODEVICE " + n.Interface,
			Level:       solSocket,
			Name:        soBindToDevice,
			Value:       &corev3.SocketOption_BufValue{BufValue: []byte(n.Interface)},
			State:       corev3.SocketOption_STATE_PREBIND,
		}}
	}
	return l
}
