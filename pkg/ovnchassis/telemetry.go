package ovnchassis

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// InstrumentationName names the meter of this package.
const InstrumentationName = "github.com/metaproxy/metaproxy/pkg/ovnchassis"

// Metric names as exported on /metrics by the Prometheus exporter.
const (
	MetricPasses             = "metaproxy_chassis_passes_total"
	MetricPassFailures       = "metaproxy_chassis_pass_failures_total"
	MetricPassLastSuccess    = "metaproxy_chassis_pass_last_success_timestamp_seconds"
	MetricNamespaces         = "metaproxy_chassis_namespaces"
	MetricReady              = "metaproxy_chassis_ready"
	MetricAgentReports       = "metaproxy_chassis_agent_reports_total"
	MetricAgentReportFailure = "metaproxy_chassis_agent_report_failures_total"
)

// MetricNames lists every metric family Instrument exports.
func MetricNames() []string {
	return []string{MetricPasses, MetricPassFailures, MetricPassLastSuccess, MetricNamespaces, MetricReady,
		MetricAgentReports, MetricAgentReportFailure}
}

// Instrument reports rec and rep on mp with observable instruments, read when the metrics are
// collected:
//
//   - MetricPasses, MetricPassFailures: reconcile passes run, and those that failed (Neutron did not
//     answer, or a namespace could not be provisioned or removed).
//   - MetricPassLastSuccess: Unix time of the last successful pass, 0 before it.
//   - MetricNamespaces: ovnmeta namespaces in place after the last pass.
//   - MetricReady: 1 once a pass succeeded (/readyz answers 200).
//   - MetricAgentReports, MetricAgentReportFailure: nb_cfg values copied to Chassis_Private, and
//     checks of the Southbound database that failed.
func Instrument(mp metric.MeterProvider, rec *Reconciler, rep *Reporter) error {
	m := mp.Meter(InstrumentationName)
	passes, err1 := m.Int64ObservableCounter("metaproxy.chassis.passes",
		metric.WithDescription("Reconcile passes of the chassis's ovnmeta namespaces, failed or not."))
	fails, err2 := m.Int64ObservableCounter("metaproxy.chassis.pass_failures",
		metric.WithDescription("Reconcile passes that failed: Neutron did not answer (nothing changed) or a namespace could not be provisioned or removed."))
	last, err3 := m.Float64ObservableGauge("metaproxy.chassis.pass.last_success_timestamp", metric.WithUnit("s"),
		metric.WithDescription("Unix time of the last successful reconcile pass; 0 before the first."))
	served, err4 := m.Int64ObservableGauge("metaproxy.chassis.namespaces",
		metric.WithDescription("ovnmeta-<network> namespaces provisioned after the last pass."))
	ready, err5 := m.Int64ObservableGauge("metaproxy.chassis.ready",
		metric.WithDescription("1 once a reconcile pass succeeded (/readyz answers 200), else 0."))
	reports, err6 := m.Int64ObservableCounter("metaproxy.chassis.agent_reports",
		metric.WithDescription("SB_Global nb_cfg values copied to Chassis_Private external_ids:neutron:ovn-metadata-sb-cfg (the agent's liveness answer)."))
	reportFails, err7 := m.Int64ObservableCounter("metaproxy.chassis.agent_report_failures",
		metric.WithDescription("Checks of the Southbound database for the agent report that failed."))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
		return err
	}
	_, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(passes, rec.Passes())
		o.ObserveInt64(fails, rec.Failures())
		secs := 0.0
		if t := rec.LastSuccess(); !t.IsZero() {
			secs = float64(t.UnixNano()) / float64(time.Second)
		}
		o.ObserveFloat64(last, secs)
		o.ObserveInt64(served, rec.Served())
		r := int64(0)
		if rec.Ready() {
			r = 1
		}
		o.ObserveInt64(ready, r)
		if rep != nil {
			o.ObserveInt64(reports, rep.Reports())
			o.ObserveInt64(reportFails, rep.Failures())
		}
		return nil
	}, passes, fails, last, served, ready, reports, reportFails)
	return err
}
