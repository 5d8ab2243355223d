// Package load is the benchmark load generator behind e2e/cmd/loadgen and the side-by-side harness:
// an ext_proc gRPC client that speaks to an ext_proc server exactly as Envoy does, the "floor"
// ext_proc server it is compared with, HTTP load from inside VM network namespaces (steady and
// boot storm), a trivial fast upstream, and a counting proxy for Neutron port lookups. Every run is
// bounded in time and count and touches loopback or namespaces the caller made, nothing else.
package load

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Result summarises one run. In a closed loop every worker sends one request, waits for its answer,
// sends the next; in an open loop (Rate > 0) requests start on a fixed schedule whatever the answers,
// and every latency counts from the request's scheduled start.
type Result struct {
	Name        string         `json:"name"`
	Concurrency int            `json:"concurrency"`
	Elapsed     time.Duration  `json:"elapsed_ns"`
	Requests    int            `json:"requests"` // answered, whatever the answer
	OK          int            `json:"ok"`       // answered as wanted (HTTP 200, a header mutation)
	Errors      map[string]int `json:"errors,omitempty"`
	PerSecond   float64        `json:"per_second"`
	P50         time.Duration  `json:"p50_ns"`
	P90         time.Duration  `json:"p90_ns"`
	P99         time.Duration  `json:"p99_ns"`
	Max         time.Duration  `json:"max_ns"`
	// Rate is the offered rate of an open-loop run (requests scheduled per second); 0: closed loop.
	Rate float64 `json:"rate,omitempty"`
	// LagP99 (open loop) is how late the client's own timer woke up for a scheduled request, at the
	// 99th percentile; it is left out of the latencies above (waiting for a free worker is not).
	LagP99 time.Duration `json:"lag_p99_ns,omitempty"`
	// StreamP50 and StreamP99 (ext_proc) time the whole stream: up to the server's status after the
	// half-close, which Envoy does only after it has continued the HTTP request. The latencies above
	// end at the HeadersResponse, the decision as Envoy waits for it.
	StreamP50 time.Duration `json:"stream_p50_ns,omitempty"`
	StreamP99 time.Duration `json:"stream_p99_ns,omitempty"`
	// Lookups is the number of Neutron port lookups made during the run, -1 when not counted.
	Lookups int64 `json:"lookups"`
}

// recorder collects latencies from many workers; each worker owns one slot, so adding is lock-free.
type recorder struct {
	mu    sync.Mutex
	slots []*slot
}

type slot struct {
	lat  []time.Duration
	full []time.Duration // whole ext_proc streams, when the request is one
	lag  []time.Duration // open loop: start behind schedule
	errs map[string]int
	ok   int
}

func (r *recorder) newSlot() *slot {
	s := &slot{lat: make([]time.Duration, 0, 4096), errs: map[string]int{}}
	r.mu.Lock()
	r.slots = append(r.slots, s)
	r.mu.Unlock()
	return s
}

// add records one answered request; kind is "" when it was answered as wanted, else what went wrong
// ("http 503", "immediate 404", "transport: ...").
func (s *slot) add(d time.Duration, kind string) {
	s.lat = append(s.lat, d)
	if kind == "" {
		s.ok++
		return
	}
	s.errs[kind]++
}

// addStream records one ext_proc stream: decision is the time to its answer, full the time to its
// status.
func (s *slot) addStream(decision, full time.Duration, kind string) {
	s.full = append(s.full, full)
	s.add(decision, kind)
}

// addLag records how late a scheduled request started.
func (s *slot) addLag(d time.Duration) { s.lag = append(s.lag, d) }

// result merges the slots.
func (r *recorder) result(name string, conc int, elapsed time.Duration) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := Result{Name: name, Concurrency: conc, Elapsed: elapsed, Errors: map[string]int{}, Lookups: -1}
	var all, full, lag []time.Duration
	for _, s := range r.slots {
		all = append(all, s.lat...)
		full = append(full, s.full...)
		lag = append(lag, s.lag...)
		res.OK += s.ok
		for k, v := range s.errs {
			res.Errors[k] += v
		}
	}
	res.Requests = len(all)
	if elapsed > 0 {
		res.PerSecond = float64(res.Requests) / elapsed.Seconds()
	}
	if len(all) > 0 {
		slices.Sort(all)
		res.P50, res.P90, res.P99, res.Max = quantile(all, .50), quantile(all, .90), quantile(all, .99), all[len(all)-1]
	}
	if len(full) > 0 {
		slices.Sort(full)
		res.StreamP50, res.StreamP99 = quantile(full, .50), quantile(full, .99)
	}
	if len(lag) > 0 {
		slices.Sort(lag)
		res.LagP99 = quantile(lag, .99)
	}
	return res
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// ErrorString renders the error counts as "kind=count, ..." in a stable order, or "-".
func (r Result) ErrorString() string {
	if len(r.Errors) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Errors[k]))
	}
	return strings.Join(parts, ", ")
}

// Print writes r as one human-readable block.
func (r Result) Print(w io.Writer) {
	loop := fmt.Sprintf("concurrency %d", r.Concurrency)
	if r.Rate > 0 {
		loop = fmt.Sprintf("open loop at %.0f/s (at most %d in flight)", r.Rate, r.Concurrency)
	}
	fmt.Fprintf(w, "%s: %s, %d requests in %s, %.0f/s, ok %d, errors %s\n",
		r.Name, loop, r.Requests, r.Elapsed.Round(time.Millisecond), r.PerSecond, r.OK, r.ErrorString())
	fmt.Fprintf(w, "  latency p50 %s  p90 %s  p99 %s  max %s\n", Ms(r.P50), Ms(r.P90), Ms(r.P99), Ms(r.Max))
	if r.Rate > 0 {
		fmt.Fprintf(w, "  (from the scheduled start, less the client's timer lateness: p99 %s)\n", Ms(r.LagP99))
	}
	if r.StreamP50 > 0 {
		fmt.Fprintf(w, "  whole stream to its status: p50 %s  p99 %s\n", Ms(r.StreamP50), Ms(r.StreamP99))
	}
	if r.Lookups >= 0 {
		fmt.Fprintf(w, "  neutron port lookups: %d\n", r.Lookups)
	}
}

// WriteJSON writes r as one JSON line.
func (r Result) WriteJSON(w io.Writer) error {
	return json.NewEncoder(w).Encode(r)
}

// Ms formats d in milliseconds with enough digits for sub-millisecond latencies.
func Ms(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 1:
		return fmt.Sprintf("%.3f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.2f ms", ms)
	default:
		return fmt.Sprintf("%.0f ms", ms)
	}
}

// bounds decides when a closed-loop run stops: after duration, or after total requests, whichever
// is given (both: whichever comes first).
type bounds struct {
	deadline time.Time
	left     chan struct{} // one token per request still allowed; nil when unbounded by count
}

func newBounds(start time.Time, duration time.Duration, total int) (*bounds, error) {
	if duration <= 0 && total <= 0 {
		return nil, fmt.Errorf("give a duration or a request count")
	}
	b := &bounds{}
	if duration > 0 {
		b.deadline = start.Add(duration)
	}
	if total > 0 {
		b.left = make(chan struct{}, total)
		for range total {
			b.left <- struct{}{}
		}
	}
	return b, nil
}

// next reports whether one more request may start.
func (b *bounds) next() bool {
	if !b.deadline.IsZero() && !time.Now().Before(b.deadline) {
		return false
	}
	if b.left != nil {
		select {
		case <-b.left:
		default:
			return false
		}
	}
	return true
}
