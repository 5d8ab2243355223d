// Package bootstrap reads an Envoy bootstrap file the way Envoy does (YAML -> JSON -> the v3
// Bootstrap proto, validated) and keeps what the stand-in implements of it: the node, the admin
// address, ADS over gRPC (state of the world or delta, set_node_on_first_message_only) to one
// static cluster, and that cluster with its endpoints and transport socket (TLS, SDS from files).
// Anything else in a bootstrap is an error at start, as an unknown field is for Envoy.
package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	// Types that appear in typed_config of a bootstrap's clusters.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/cluster"
)

// Bootstrap is what the stand-in takes from an Envoy bootstrap.
type Bootstrap struct {
	NodeID, NodeCluster string
	// Admin is the admin interface's HOST:PORT ("" without an admin).
	Admin string
	// Delta is ads_config.api_type DELTA_GRPC (else GRPC, state of the world).
	Delta bool
	// NodeOnFirstMessageOnly is ads_config.set_node_on_first_message_only.
	NodeOnFirstMessageOnly bool
	// XDS is the cluster ADS goes to.
	XDS *cluster.Config
}

// Overrides are Envoy's command-line flags that change the bootstrap's node.
type Overrides struct {
	ServiceNode, ServiceCluster string // --service-node, --service-cluster
}

// Load reads the bootstrap at path.
func Load(path string, o Overrides) (*Bootstrap, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	js, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	var pb bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &pb); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	if err := pb.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	b, err := fromProto(&pb, o)
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", path, err)
	}
	return b, nil
}

func fromProto(pb *bootstrapv3.Bootstrap, o Overrides) (*Bootstrap, error) {
	b := &Bootstrap{NodeID: pb.GetNode().GetId(), NodeCluster: pb.GetNode().GetCluster()}
	if o.ServiceNode != "" {
		b.NodeID = o.ServiceNode
	}
	if o.ServiceCluster != "" {
		b.NodeCluster = o.ServiceCluster
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if b.NodeID == "" {
		bad("node.id is empty and --service-node not given")
	}
	if a := pb.GetAdmin().GetAddress(); a != nil {
		sa := a.GetSocketAddress()
		if sa == nil || sa.GetPortValue() == 0 {
			bad("admin.address: only socket_address with port_value is supported by the stand-in")
		} else {
			b.Admin = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	dr := pb.GetDynamicResources()
	ads := dr.GetAdsConfig()
	switch ads.GetApiType() {
	case corev3.ApiConfigSource_GRPC:
	case corev3.ApiConfigSource_DELTA_GRPC:
		b.Delta = true
	default:
		bad("dynamic_resources.ads_config.api_type %s: the stand-in speaks GRPC and DELTA_GRPC", ads.GetApiType())
	}
	if ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		bad("ads_config.transport_api_version must be V3")
	}
	b.NodeOnFirstMessageOnly = ads.GetSetNodeOnFirstMessageOnly()
	if dr.GetLdsConfig().GetAds() == nil || dr.GetCdsConfig().GetAds() == nil {
		bad("lds_config and cds_config must be ads")
	}
	var xdsName string
	if gs := ads.GetGrpcServices(); len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() == "" {
		bad("ads_config.grpc_services: want exactly one envoy_grpc service (google_grpc is not supported by the stand-in)")
	} else {
		xdsName = gs[0].GetEnvoyGrpc().GetClusterName()
	}
	sr := pb.GetStaticResources()
	if len(sr.GetListeners()) > 0 || len(sr.GetSecrets()) > 0 {
		bad("static_resources: only clusters are supported by the stand-in")
	}
	for _, c := range sr.GetClusters() {
		cfg, err := cluster.Parse(c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cfg.Name == xdsName {
			b.XDS = cfg
		}
	}
	if b.XDS == nil && xdsName != "" {
		bad("the ADS cluster %q is not among static_resources.clusters", xdsName)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return b, nil
}

// Plaintext is the bootstrap of the stand-in's --xds shortcut: ADS in plain text to addr
// (HOST:PORT), as a STATIC/STRICT_DNS cluster named xds would say.
func Plaintext(addr, nodeID, nodeCluster string, delta bool, admin string) (*Bootstrap, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--xds %q: %w", addr, err)
	}
	return &Bootstrap{
		NodeID: nodeID, NodeCluster: nodeCluster, Admin: admin, Delta: delta,
		XDS: &cluster.Config{Name: "xds", ConnectTimeout: cluster.DefaultConnectTimeout, HTTP2: true,
			Endpoints: []cluster.Endpoint{{Network: "tcp", Address: net.JoinHostPort(host, port)}}},
	}, nil
}
