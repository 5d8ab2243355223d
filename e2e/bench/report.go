//go:build e2e

package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/load"
)

// memRow is one RSS measurement.
type memRow struct {
	what     string
	startKiB int64
	rssKiB   int64
	hwmKiB   int64
}

// report collects the results and renders them.
type report struct {
	started    time.Time
	machine    string
	dataPlane  string
	opts       options
	counterURL string
	mpNova     *metaproxy

	warm              load.Result
	decisions         [][2]load.Result   // floor, cmd/extproc; closed loop at 1/4/32/64 streams: the median round
	decisionRounds    [][][2]load.Result // every round at each concurrency, in the order run
	openLoop          [][2]load.Result   // floor, cmd/extproc; open loop at each rate
	extprocRSS        memRow
	extprocNeutronRSS memRow
	xdsRSS            memRow
	nova              [3]load.Result // direct, incumbent, metaproxy
	trivial           [3]load.Result
	storm             [2]load.Result // incumbent, metaproxy
	ovn               [3]load.Result // ML2/OVN chassis: direct, incumbent agent, metaproxy
	ovnSkipped        string
	cpu               []cpuRow
}

// cpuRow is the CPU time one HTTP run cost, per process.
type cpuRow struct {
	name     string
	requests int
	use      cpuUse
}

// dataPlaneShort names the data plane in a table row.
func (r *report) dataPlaneShort() string {
	if strings.HasPrefix(r.dataPlane, "Envoy") {
		return "Envoy"
	}
	return "stand-in"
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func httpRow(sb *strings.Builder, r load.Result, vsDirect, vsInc string) {
	fmt.Fprintf(sb, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", r.Name, r.PerSecond, load.Ms(r.P50), load.Ms(r.P90),
		load.Ms(r.P99), load.Ms(r.Max), r.ErrorString(), vsDirect, vsInc)
}

func (r *report) markdown() string {
	var sb strings.Builder
	loadEnd, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&sb, "## Side-by-side run of %s\n\n", r.started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&sb, "- Machine: %s; load average at the end %s.\n", r.machine, strings.Join(strings.Fields(string(loadEnd))[:3], " "))
	fmt.Fprintf(&sb, "- Data plane of metaproxy: **%s**.\n", r.dataPlane)
	fmt.Fprintf(&sb, "- HTTP load: loadgen http, %d keep-alive connections, %s per run, GET %s from one VM namespace per chain (nova direct: from the host with signed headers). The load client shares the CPUs with everything it measures.\n\n",
		r.opts.concurrency, r.opts.duration, metaPath)

	sections := []struct {
		title string
		res   [3]load.Result
	}{{"(a) Whole path, real nova metadata API behind both chains", r.nova}, {"(b) Proxy overhead, trivial upstream in place of nova", r.trivial}}
	for _, s := range sections {
		d, i, m := s.res[0], s.res[1], s.res[2]
		fmt.Fprintf(&sb, "### %s\n\n", s.title)
		sb.WriteString("| path | req/s | p50 | p90 | p99 | max | errors | req/s vs direct | req/s vs incumbent |\n|---|---|---|---|---|---|---|---|---|\n")
		httpRow(&sb, d, "1.00", "-")
		httpRow(&sb, i, ratio(i.PerSecond, d.PerSecond), "1.00")
		httpRow(&sb, m, ratio(m.PerSecond, d.PerSecond), ratio(m.PerSecond, i.PerSecond))
		sb.WriteString("\n")
	}
	r.ovnMarkdown(&sb)
	d, i, m := r.nova[0], r.nova[1], r.nova[2]
	ti, tm := r.trivial[1], r.trivial[2]
	added := m.P99 - d.P99
	sb.WriteString("### Targets\n\n| target | measured | verdict |\n|---|---|---|\n")
	fmt.Fprintf(&sb, "| (a) metaproxy >= 90%% of nova-direct req/s (incumbent: ~35%%) | metaproxy %.0f%%, incumbent %.0f%% | %s |\n",
		100*m.PerSecond/d.PerSecond, 100*i.PerSecond/d.PerSecond, verdict(m.PerSecond >= 0.9*d.PerSecond))
	fmt.Fprintf(&sb, "| (a) metaproxy p99 <= nova-direct p99 + 1 ms | %s vs %s (%+.2f ms) | %s |\n", load.Ms(m.P99), load.Ms(d.P99),
		float64(added)/float64(time.Millisecond), verdict(added <= time.Millisecond))
	fmt.Fprintf(&sb, "| (b) metaproxy >= 20x incumbent req/s | %sx | %s |\n", ratio(tm.PerSecond, ti.PerSecond), verdict(tm.PerSecond >= 20*ti.PerSecond))
	fmt.Fprintf(&sb, "| (b) metaproxy p99 <= 1/20 of incumbent p99 | 1/%s | %s |\n", ratio(float64(ti.P99), float64(tm.P99)), verdict(20*tm.P99 <= ti.P99))
	si, sm := r.storm[0], r.storm[1]
	vms := r.opts.stormVMs
	fmt.Fprintf(&sb, "| boot storm: Neutron port lookups <= VMs (%d) | metaproxy %d | %s |\n", vms, sm.Lookups, verdict(sm.Lookups >= 0 && sm.Lookups <= int64(vms)))
	if len(r.decisions) > 0 {
		e1 := r.decisions[0][1]
		fmt.Fprintf(&sb, "| decision p99 < 0.5 ms warm: closed loop, %d stream | %s (floor %s) | %s |\n",
			e1.Concurrency, load.Ms(e1.P99), load.Ms(r.decisions[0][0].P99), verdict(e1.P99 < 500*time.Microsecond))
		if len(r.openLoop) > 0 {
			f, e := r.openLoop[0][0], r.openLoop[0][1]
			fmt.Fprintf(&sb, "| decision p99 < 0.5 ms warm: open loop at %.0f/s (loaded, not saturated) | %s (floor %s) | %s |\n",
				e.Rate, load.Ms(e.P99), load.Ms(f.P99), verdict(e.P99 < 500*time.Microsecond))
		}
		best := 0.0
		worst := 10.0
		for _, p := range r.decisions {
			best = max(best, p[1].PerSecond)
			worst = min(worst, decisionRatio(p))
		}
		fmt.Fprintf(&sb, "| > 20k decisions/s per core | best %.0f/s on 2 cores shared with the client (%.0f/core) | %s |\n", best, best/2, verdict(best/2 > 20000))
		fmt.Fprintf(&sb, "| decisions >= 90%% of the floor at every concurrency (issue 14; median of %d rounds) | worst %.0f%% | %s |\n", len(r.decisionRounds[0]), 100*worst, verdict(worst >= 0.9))
	}
	fmt.Fprintf(&sb, "| < 100 MiB RSS with 100k cached ports (Neutron as source, as in production) | %.1f MiB | %s |\n", mib(r.extprocNeutronRSS.rssKiB), verdict(mib(r.extprocNeutronRSS.rssKiB) < 100))
	fmt.Fprintf(&sb, "| < 100 MiB RSS with 100k cached ports (ports file: its 100k-port index too) | %.1f MiB | %s |\n", mib(r.extprocRSS.rssKiB), verdict(mib(r.extprocRSS.rssKiB) < 100))
	sb.WriteString("\n")

	fmt.Fprintf(&sb, "### Boot storm: %d VMs per chain at once, each fetching cloud-init's %d paths on new connections (real nova)\n\n", vms, len(load.CloudInitPaths))
	sb.WriteString("| chain | requests | wall time | req/s | p50 | p99 | max | errors | Neutron port lookups |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range []load.Result{si, sm} {
		lk := "not counted (the agent asks neutron-server over RPC)"
		if s.Lookups >= 0 {
			lk = fmt.Sprint(s.Lookups)
		}
		fmt.Fprintf(&sb, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %s |\n", s.Name, s.Requests, s.Elapsed.Round(time.Millisecond),
			s.PerSecond, load.Ms(s.P50), load.Ms(s.P99), load.Ms(s.Max), s.ErrorString(), lk)
	}
	sb.WriteString("\n### ext_proc decisions: cmd/extproc (100k ports cached, 1000 cycled) vs the floor server, same Envoy-exact gRPC client, UNIX socket, one stream per request\n\n")
	sb.WriteString("Latency is the decision as Envoy waits for it: from opening the stream to the HeadersResponse (Envoy continues the HTTP request right then, and closes the stream afterwards). " +
		"The client then half-closes and reads the status before its next stream: that is in /s, and in the whole-stream p99 column.\n\n")
	sb.WriteString("Closed loop (each stream opens when the previous one is done; at 32 and 64 streams the latency is mostly queueing):\n\n")
	fmt.Fprintf(&sb, "Each concurrency ran %d rounds, floor and cmd/extproc alternating; the row is the round with the median ratio, the last column every round's ratio in the order run.\n\n", len(r.decisionRounds[0]))
	sb.WriteString("| streams | floor /s | floor p50 | floor p99 | cmd/extproc /s | p50 | p90 | p99 | max | whole stream p99 | errors | extproc/floor | every round |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i, p := range r.decisions {
		f, e := p[0], p[1]
		var each []string
		for _, rp := range r.decisionRounds[i] {
			each = append(each, ratio(rp[1].PerSecond, rp[0].PerSecond))
		}
		fmt.Fprintf(&sb, "| %d | %.0f | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n", e.Concurrency, f.PerSecond, load.Ms(f.P50), load.Ms(f.P99),
			e.PerSecond, load.Ms(e.P50), load.Ms(e.P90), load.Ms(e.P99), load.Ms(e.Max), load.Ms(e.StreamP99), e.ErrorString(), ratio(e.PerSecond, f.PerSecond), strings.Join(each, ", "))
	}
	if len(r.openLoop) > 0 {
		sb.WriteString("\nOpen loop (streams start on a fixed schedule whatever the answers, at most " + fmt.Sprint(openLoopInFlight) + " in flight; latency from the scheduled start, less the client's own timer lateness, shown apart):\n\n")
		sb.WriteString("| rate | floor p50 | floor p99 | cmd/extproc achieved /s | p50 | p90 | p99 | max | whole stream p99 | client timer lateness p99 | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.openLoop {
			f, e := p[0], p[1]
			fmt.Fprintf(&sb, "| %.0f/s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", e.Rate, load.Ms(f.P50), load.Ms(f.P99),
				e.PerSecond, load.Ms(e.P50), load.Ms(e.P90), load.Ms(e.P99), load.Ms(e.Max), load.Ms(e.StreamP99), load.Ms(e.LagP99), e.ErrorString())
		}
	}
	fmt.Fprintf(&sb, "\nWarm-up (every one of the 100k ports looked up once, 32 streams): %d requests, %.0f/s, p99 %s, errors %s.\n\n",
		r.warm.Requests, r.warm.PerSecond, load.Ms(r.warm.P99), r.warm.ErrorString())
	sb.WriteString("### Where the CPU went (ms of CPU per request, by process, over each HTTP run above, in order)\n\n")
	sb.WriteString("| run | machine busy | per process |\n|---|---|---|\n")
	for _, c := range r.cpu {
		fmt.Fprintf(&sb, "| %s | %.0f%% of %s | %s |\n", c.name, 100*c.use.busy/(c.use.wall.Seconds()*float64(runtime.NumCPU())),
			c.use.wall.Round(100*time.Millisecond), c.use.perRequest(c.requests))
	}
	sb.WriteString("\n")
	sb.WriteString("### Memory\n\n| process | VmRSS | VmHWM (peak) |\n|---|---|---|\n")
	for _, e := range []memRow{r.extprocNeutronRSS, r.extprocRSS} {
		fmt.Fprintf(&sb, "| %s (%.1f MiB before the warm-up) | %.1f MiB | %.1f MiB |\n", e.what, mib(e.startKiB), mib(e.rssKiB), mib(e.hwmKiB))
	}
	fmt.Fprintf(&sb, "| %s | %.1f MiB | %.1f MiB |\n\n", r.xdsRSS.what, mib(r.xdsRSS.rssKiB), mib(r.xdsRSS.hwmKiB))
	return sb.String()
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// ovnMarkdown renders the ML2/OVN section: the same load on one chassis, nova directly, through
// the incumbent agent, through metaproxy.
func (r *report) ovnMarkdown(sb *strings.Builder) {
	sb.WriteString("### (OVN) ML2/OVN chassis: the real neutron-ovn-metadata-agent vs metaproxy, real nova\n\n")
	if r.ovnSkipped != "" {
		fmt.Fprintf(sb, "%s\n\n", r.ovnSkipped)
		return
	}
	sb.WriteString("One VM with its address from OVN's DHCP; both chains through OVN (OVS userspace datapath, no kernel module on this machine) to the same ovnmeta- namespace, one after the other.\n\n")
	sb.WriteString("| path | req/s | p50 | p90 | p99 | max | errors | req/s vs direct | req/s vs incumbent |\n|---|---|---|---|---|---|---|---|---|\n")
	d, i, m := r.ovn[0], r.ovn[1], r.ovn[2]
	httpRow(sb, d, "1.00", "-")
	httpRow(sb, i, ratio(i.PerSecond, d.PerSecond), "1.00")
	httpRow(sb, m, ratio(m.PerSecond, d.PerSecond), ratio(m.PerSecond, i.PerSecond))
	sb.WriteString("\n")
}
