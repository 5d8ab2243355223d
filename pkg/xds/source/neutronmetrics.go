package source

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// InstrumentationName names the meter of this package.
const InstrumentationName = "github.com/metaproxy/metaproxy/pkg/xds/source"

// Metric names of the Neutron source as the Prometheus exporter exports them.
const (
	// MetricRequests counts the Neutron API requests the source made, by endpoint (LabelEndpoint).
	MetricRequests = "metaproxy_xds_source_requests_total"
	// MetricRequestsPerPoll is the number of Neutron API requests the last poll made.
	MetricRequestsPerPoll = "metaproxy_xds_source_requests_per_poll"
	// LabelEndpoint is the Neutron endpoint of a request: one of the Endpoint* values.
	LabelEndpoint = "endpoint"
)

// Endpoints the Neutron source calls, as LabelEndpoint values (every page of a listing is one
// request).
const (
	EndpointAgents            = "agents"              // GET /v2.0/agents
	EndpointPorts             = "ports"               // GET /v2.0/ports
	EndpointAgentDHCPNetworks = "agent_dhcp_networks" // GET /v2.0/agents/<id>/dhcp-networks
	EndpointAgentL3Routers    = "agent_l3_routers"    // GET /v2.0/agents/<id>/l3-routers
	EndpointSubnets           = "subnets"             // GET /v2.0/subnets
	EndpointRouters           = "routers"             // GET /v2.0/routers
)

// NeutronMetricNames lists the metric families the Neutron source exports.
func NeutronMetricNames() []string { return []string{MetricRequests, MetricRequestsPerPoll} }

// requests counts one poll's Neutron requests by endpoint.
type requests map[string]int

// requestMetrics are the source's instruments.
type requestMetrics struct {
	total   metric.Int64Counter
	perPoll metric.Int64Gauge
}

func newRequestMetrics(mp metric.MeterProvider) (*requestMetrics, error) {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter(InstrumentationName)
	total, err := m.Int64Counter("metaproxy.xds.source.requests",
		metric.WithDescription("Neutron API requests made by the network source, by endpoint (each page of a listing is one)."))
	if err != nil {
		return nil, err
	}
	perPoll, err := m.Int64Gauge("metaproxy.xds.source.requests_per_poll",
		metric.WithDescription("Neutron API requests the last poll of the network source made."))
	if err != nil {
		return nil, err
	}
	return &requestMetrics{total: total, perPoll: perPoll}, nil
}

// record adds one poll's requests.
func (m *requestMetrics) record(ctx context.Context, calls requests) {
	ctx = context.WithoutCancel(ctx)
	sum := 0
	for endpoint, n := range calls {
		m.total.Add(ctx, int64(n), metric.WithAttributes(attribute.String(LabelEndpoint, endpoint)))
		sum += n
	}
	m.perPoll.Record(ctx, int64(sum))
}
