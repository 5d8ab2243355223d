package observability_test

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/metaproxy/metaproxy/deploy/observability"
	"github.com/metaproxy/metaproxy/pkg/chassiscmd"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/extproccmd"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

// metricRef matches the metric names the files may use: ours, the Go runtime's and the process's.
var metricRef = regexp.MustCompile(`\b(?:metaproxy|go|process)_[a-z0-9_]+\b`)

// exported returns every series name cmd/extproc and cmd/xds export: their own families
// (histograms as their _bucket, _sum and _count series) and those of the Go and process collectors
// on their registries.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	histograms := []string{decide.MetricDecisionDuration, decide.MetricResolverDuration}
	for _, n := range extproccmd.MetricNames() {
		names[n] = true
		if slices.Contains(histograms, n) {
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		}
	}
	for _, n := range append(xdscmd.MetricNames(), chassiscmd.MetricNames()...) {
		names[n] = true
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	tel, err := telemetry.New(context.Background(), telemetry.Options{ServiceName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	fams, err := tel.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		names[f.GetName()] = true
	}
	return names
}

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

type rules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestDashboard(t *testing.T) {
	for name, tc := range map[string]struct {
		json []byte
		ours []string // every one must be on a panel
	}{
		"dashboard-extproc.json": {observability.DashboardExtproc, extproccmd.MetricNames()},
		"dashboard-xds.json":     {observability.DashboardXDS, xdscmd.MetricNames()},
	} {
		t.Run(name, func(t *testing.T) { checkDashboard(t, tc.json, tc.ours) })
	}
}

func checkDashboard(t *testing.T, raw []byte, ours []string) {
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels: %+v", d)
	}
	names := exported(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			refs := metricRef.FindAllString(tg.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("panel %q: query %q uses no metric", p.Title, tg.Expr)
			}
			checkRefs(t.Errorf, "panel "+p.Title, tg.Expr, refs, names, used)
		}
	}
	for _, v := range d.Templating.List {
		checkRefs(t.Errorf, "variable "+v.Name, v.Definition, metricRef.FindAllString(v.Definition, -1), names, used)
	}
	// Every metric of ours is on the dashboard.
	for _, n := range ours {
		if !used[n] && !used[n+"_bucket"] {
			t.Errorf("%s is exported but on no dashboard panel", n)
		}
	}
}

func TestAlerts(t *testing.T) {
	var r rules
	dec := yaml.NewDecoder(strings.NewReader(string(observability.Alerts)))
	dec.KnownFields(true)
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	if len(r.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	names := exported(t)
	seen := map[string]bool{}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			where := "alert " + rule.Alert
			switch {
			case rule.Alert == "" || rule.Expr == "":
				t.Errorf("%s in group %s: alert name and expr are required", where, g.Name)
			case seen[rule.Alert]:
				t.Errorf("%s defined twice", where)
			case rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" || rule.Annotations["description"] == "":
				t.Errorf("%s: needs labels.severity and annotations summary and description", where)
			}
			seen[rule.Alert] = true
			refs := metricRef.FindAllString(rule.Expr, -1)
			if len(refs) == 0 && !strings.Contains(rule.Expr, "up{") {
				t.Errorf("%s: expr %q uses no metric", where, rule.Expr)
			}
			checkRefs(t.Errorf, where, rule.Expr, refs, names, nil)
			for k, v := range rule.Annotations {
				checkRefs(t.Errorf, where+" annotation "+k, v, metricRef.FindAllString(v, -1), names, nil)
			}
		}
	}
}

// TestCheckCatchesUnknownNames: the check fails on a name the code does not export.
func TestCheckCatchesUnknownNames(t *testing.T) {
	failed := false
	names := map[string]bool{"metaproxy_extproc_requests_total": true}
	expr := `rate(metaproxy_extproc_request_total[5m])`
	checkRefs(func(string, ...any) { failed = true }, "made up", expr, metricRef.FindAllString(expr, -1), names, nil)
	if !failed {
		t.Fatal("a misspelt metric name passed the check")
	}
}

// checkRefs reports (with errorf) every name in refs that is not in names, and marks refs used.
func checkRefs(errorf func(string, ...any), where, expr string, refs []string, names, used map[string]bool) {
	for _, ref := range refs {
		if !names[ref] {
			errorf("%s: %q uses %s, which neither cmd/extproc nor cmd/xds exports", where, expr, ref)
		}
		if used != nil {
			used[ref] = true
		}
	}
}
