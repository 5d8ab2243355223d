package translate

import (
	"fmt"
	"path/filepath"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
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

// ListenerNetwork returns the network (or router) id in a name made by ListenerName, ok false for
// any other name.
func ListenerNetwork(name string) (id string, ok bool) {
	rest, ok := strings.CutPrefix(name, "metadata-")
	if !ok {
		return "", false
	}
	if r, cut := strings.CutPrefix(rest, resolve.KindNetwork.String()+"-"); cut {
		rest = r
	} else if r, cut := strings.CutPrefix(rest, resolve.KindRouter.String()+"-"); cut {
		rest = r
	} else {
		return "", false
	}
	for _, v := range []string{"-ipv4", "-ipv6"} {
		if id, cut := strings.CutSuffix(rest, v); cut && contract.ValidID(id) {
			return id, true
		}
	}
	return "", false
}

// namespaceFilepath is the network_namespace_filepath of a listener in the namespace at path, of
// the given generation (source.Network.NamespaceGeneration). Envoy keeps a listener's socket when
// an update leaves its address equal (ListenerManagerImpl::setupSocketFactoryForListener clones
// the socket factory when ListenerImpl::hasCompatibleAddress holds, and a removed-then-added
// listener clones the open socket of a draining one with a compatible address; since 1.36.0,
// envoyproxy/envoy#41103, address equality includes the namespace file path as written). A
// namespace recreated at the same path would therefore keep Envoy's socket in the dead namespace,
// whatever else changed in the listener. Odd generations spell the same file as dir/./name: a
// different address for Envoy, the same namespace for open(2), so Envoy opens a new socket in the
// new namespace.
func namespaceFilepath(path string, generation uint32) string {
	if generation%2 == 0 {
		return path
	}
	dir, name := filepath.Split(path)
	return dir + "./" + name
}

// AttemptKey is the listener metadata (filter_metadata) key under which WithAttempt records how
// often a rejected listener was pushed again.
const AttemptKey = "metaproxy.xds"

// WithAttempt returns a copy of l that differs from it only in its metadata
// (filter_metadata[AttemptKey].attempt = attempt), so that go-control-plane sends it again:
// its delta server counts a rejected resource as delivered and resends only a resource whose
// content changed, and state of the world resends only a snapshot whose version changed. Envoy
// applies a metadata change as a listener update (a new listener, the socket kept when the
// address is unchanged) and never looks at the value.
func WithAttempt(l *listenerv3.Listener, attempt uint32) *listenerv3.Listener {
	out := proto.Clone(l).(*listenerv3.Listener)
	if out.Metadata == nil {
		out.Metadata = &corev3.Metadata{}
	}
	if out.Metadata.FilterMetadata == nil {
		out.Metadata.FilterMetadata = map[string]*structpb.Struct{}
	}
	out.Metadata.FilterMetadata[AttemptKey] = &structpb.Struct{Fields: map[string]*structpb.Value{
		"attempt": structpb.NewNumberValue(float64(attempt)),
	}}
	return out
}

// Listeners returns the listeners of network n, validated: the IPv4 one and, when n.Interface is
// known, the IPv6 one, sorted by name. They depend on n and the settings only, never on the node
// that serves n.
func (sh *Shared) Listeners(n source.Network) ([]*listenerv3.Listener, error) {
	if err := CheckNetwork(n); err != nil {
		return nil, err
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
	statPrefix := "metadata-" + n.Kind.String() + "-" + n.ID
	var hcm *anypb.Any
	for i, v := range versions {
		name := ListenerName(n.Kind, n.ID, int(v))
		if i == 0 || !sh.hcm.sameForVersions(versions[i-1], v) {
			if hcm, err = sh.hcm.httpConnectionManager(statPrefix, v, extProc); err != nil {
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

// CheckNetwork returns what makes n unfit for listeners, nil when nothing does: its id, namespace
// path and interface name as Listeners requires them (an id of letters, digits, '-' and '_' of at
// most contract.MaxIDLen bytes, any namespace path but an empty one, an interface name of
// source.ValidInterface or none).
func CheckNetwork(n source.Network) error {
	if !contract.ValidID(n.ID) {
		return fmt.Errorf("invalid id %q", n.ID)
	}
	if n.NamespacePath == "" {
		return fmt.Errorf("no namespace path")
	}
	if n.Interface != "" && !source.ValidInterface(n.Interface) {
		return fmt.Errorf("invalid interface name %q", n.Interface)
	}
	return nil
}

// listener binds name on the metadata address of version v inside n's namespace.
//
// freebind is set because the metadata address may not be configured yet when Envoy receives the
// listener (Neutron adds 169.254.169.254 and fe80::a9fe:a9fe after creating the namespace, and the
// IPv6 address is "tentative" until DAD completes); a failed bind is rejected by Envoy and only
// pushed again after a back-off (package serve). The IPv6 listener is bound to the DHCP port's
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
			NetworkNamespaceFilepath: namespaceFilepath(n.NamespacePath, n.NamespaceGeneration),
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
