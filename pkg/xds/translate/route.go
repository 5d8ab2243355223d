package translate

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

// RouteConfiguration returns the route configuration shared by all listeners: every request to the
// nova_metadata cluster, with haproxy's `timeout server` as the route timeout.
func RouteConfiguration(s Settings) (*routev3.RouteConfiguration, error) {
	rc := &routev3.RouteConfiguration{
		Name: RouteName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "metadata",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:  "nova",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: contract.NovaClusterName},
					Timeout:          durationpb.New(s.Timeouts.Server),
				}},
			}},
		}},
	}
	if err := validate(rc); err != nil {
		return nil, err
	}
	return rc, nil
}
