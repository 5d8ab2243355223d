// Package observability holds the operator's side of metaproxy's telemetry: the Grafana dashboard
// (dashboard-extproc.json, dashboard-xds.json) and the Prometheus alerting rules (alerts.yaml) for
// cmd/extproc and cmd/xds. They are
// embedded here so that the test beside them can check every metric they use is one the code
// exports; docs/observability.md describes each metric.
package observability

import _ "embed"

// DashboardExtproc is the Grafana dashboard of cmd/extproc (JSON model).
//
//go:embed dashboard-extproc.json
var DashboardExtproc []byte

// Alerts are the Prometheus alerting rules of cmd/extproc and cmd/xds (rule file YAML).
//
//go:embed alerts.yaml
var Alerts []byte

// DashboardXDS is the Grafana dashboard of cmd/xds (JSON model).
//
//go:embed dashboard-xds.json
var DashboardXDS []byte
