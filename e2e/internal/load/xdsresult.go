package load

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/xdsclient"
)

// Dist is a distribution of per-node durations.
type Dist struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func (d Dist) String() string {
	if d.N == 0 {
		return "-"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", Secs(d.P50), Secs(d.P90), Secs(d.P99), Secs(d.Max))
}

// ResourceCount is how many resources of one type the nodes received for the change.
type ResourceCount struct {
	Total   int `json:"total"`
	PerNode int `json:"per_node_max"`
	MinNode int `json:"per_node_min"`
}

// XDSMem is cmd/xds's memory at the milestones of a run.
type XDSMem struct {
	Listening procSample `json:"listening"` // before its first poll
	Ready     procSample `json:"ready"`     // when /readyz first answered 200
	Full      procSample `json:"full"`      // every node had its full configuration
	Changed   procSample `json:"changed"`   // the change had reached every node
	Peak      uint64     `json:"peak_bytes"`
}

// XDSResult is what one `loadgen xds` run measured.
type XDSResult struct {
	Name              string        `json:"name"`
	Mode              string        `json:"mode"` // sotw or delta
	Nodes             int           `json:"nodes"`
	Networks          int           `json:"networks"`
	AgentsPerNetwork  int           `json:"agents_per_network"`
	ListenersPerNode  int           `json:"listeners_per_node"`
	PollInterval      time.Duration `json:"poll_interval_ns"`
	ConnectAfterReady bool          `json:"connect_after_ready"`
	NodeExtensions    int           `json:"node_extensions"`
	// FileBytes is the size of the networks file; FileParse how long cmd/xds's parser
	// (source.ParseNetworks) took on it in the load tool's process: part of every poll that sees a
	// change with --source file, and not of Neutron's.
	FileBytes int           `json:"file_bytes"`
	FileParse time.Duration `json:"file_parse_ns"`
	// XDSReady is the time from cmd/xds's start to its first /readyz 200 (first poll done).
	XDSReady time.Duration `json:"xds_ready_ns"`

	// Full is per node, from its connect to its full configuration; AllFull from the first
	// connect to the last node's; NotFull counts the nodes that did not get there in time.
	Full    Dist          `json:"full"`
	AllFull time.Duration `json:"all_full_ns"`
	NotFull int           `json:"not_full"`
	// FewerFirst counts nodes whose first listener set had fewer listeners than their networks
	// give (EmptyFirst: none at all): an Envoy would have dropped listeners it was serving.
	FewerFirst int `json:"fewer_first"`
	EmptyFirst int `json:"empty_first"`

	// PollWait is from writing the change to cmd/xds's next poll opening the file (-1: no open
	// seen). Change is per node, from that poll (or the write) to the node having the new listener
	// (AllChanged: the last node, when all had it); ChangeFromWrite is the last node from the
	// write. NotChanged counts nodes that never had it.
	PollWait        time.Duration `json:"poll_wait_ns"`
	Change          Dist          `json:"change"`
	AllChanged      time.Duration `json:"all_changed_ns"`
	ChangeFromWrite time.Duration `json:"change_from_write_ns"`
	NotChanged      int           `json:"not_changed"`
	// ChangeResources counts, by resource type, what the nodes received from the change's write to
	// the next poll after it reached every node; ChangeRemoved the names delta responses removed.
	ChangeResources map[string]ResourceCount `json:"change_resources"`
	ChangeRemoved   int                      `json:"change_removed"`

	NACKs        int            `json:"nacks"`
	Rejected     map[string]int `json:"rejected,omitempty"`      // updates the clients refused, by reason
	StreamErrors map[string]int `json:"stream_errors,omitempty"` // broken streams, by gRPC code
	// Problems counts, for the nodes that did not reach a phase, what they lacked.
	Problems map[string]int `json:"problems,omitempty"`

	Mem XDSMem     `json:"xds_mem"`
	CPU []CPUPhase `json:"cpu"`
}

func newXDSResult(o XDSOptions, fileBytes int) XDSResult {
	mode := "sotw"
	if o.Delta {
		mode = "delta"
	}
	return XDSResult{
		Name: o.Name, Mode: mode, Nodes: o.Nodes, Networks: o.Networks, AgentsPerNetwork: o.AgentsPerNetwork,
		ListenersPerNode: o.Networks * o.ListenersPerNetwork(), PollInterval: o.PollInterval,
		ConnectAfterReady: o.ConnectAfterReady, NodeExtensions: o.NodeExtensions, FileBytes: fileBytes,
		ChangeResources: map[string]ResourceCount{}, Rejected: map[string]int{}, StreamErrors: map[string]int{},
		Problems: map[string]int{},
	}
}

// summarize fills the per-node figures from the nodes' reports; writeAt is when the change was
// written (zero: no change was made), readAt when cmd/xds's next poll opened it (zero: unseen).
func (r *XDSResult) summarize(reports []nodeReport, writeAt, readAt time.Time) {
	changeBase := readAt
	r.PollWait = readAt.Sub(writeAt)
	if readAt.IsZero() {
		changeBase, r.PollWait = writeAt, -1
	}
	var full, change []time.Duration
	var latest time.Time
	perType := map[string][]int{}
	for _, n := range reports {
		if n.reached[phaseFull].IsZero() {
			r.NotFull++
		} else {
			full = append(full, n.reached[phaseFull].Sub(n.started))
		}
		if n.firstLDS >= 0 && n.firstLDS < n.expected {
			r.FewerFirst++
			if n.firstLDS == 0 {
				r.EmptyFirst++
			}
		}
		if at := n.reached[phaseChanged]; at.IsZero() {
			r.NotChanged++
		} else {
			change = append(change, at.Sub(changeBase))
			if at.After(latest) {
				latest = at
			}
		}
		for typ, c := range n.changeRes {
			perType[shortTypeName(typ)] = append(perType[shortTypeName(typ)], c)
		}
		r.ChangeRemoved += n.changeRemoved
		r.NACKs += n.nacks
		if n.rejected > 0 {
			r.Rejected[n.lastError] += n.rejected
		}
		for k, v := range n.streamErr {
			r.StreamErrors[k] += v
		}
		for _, p := range slices.Compact(slices.Sorted(slices.Values(n.problems))) {
			r.Problems[p]++
		}
	}
	r.Full, r.Change = quantiles(full), quantiles(change)
	if r.NotChanged == 0 {
		r.AllChanged, r.ChangeFromWrite = latest.Sub(changeBase), latest.Sub(writeAt)
	}
	for typ, counts := range perType {
		c := ResourceCount{MinNode: counts[0]}
		if len(counts) < len(reports) {
			c.MinNode = 0 // some nodes got none of this type
		}
		for _, n := range counts {
			c.Total += n
			c.PerNode, c.MinNode = max(c.PerNode, n), min(c.MinNode, n)
		}
		r.ChangeResources[typ] = c
	}
}

// shortTypeName turns a type URL into "listeners", "routes", "clusters" or "endpoints".
func shortTypeName(typeURL string) string {
	switch typeURL {
	case xdsclient.ListenerType:
		return "listeners"
	case xdsclient.RouteType:
		return "routes"
	case xdsclient.ClusterType:
		return "clusters"
	case xdsclient.EndpointType:
		return "endpoints"
	}
	return typeURL
}

// Secs formats d in seconds (milliseconds below one second).
func Secs(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// MiB formats a byte count in MiB.
func MiB(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// counts renders a name -> count map as "name=count, ..." in a stable order, or "-".
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// Print writes r as a human-readable block.
func (r XDSResult) Print(w io.Writer) {
	connect := "as soon as cmd/xds listens (before its first poll ends)"
	if r.ConnectAfterReady {
		connect = "after cmd/xds's first poll (/readyz)"
	}
	name := r.Name
	if name == "" {
		name = "xds"
	}
	fmt.Fprintf(w, "%s %s: %d nodes x %d networks (%d node(s) per network), %d listeners per node, poll %s; clients connect %s; %d extensions per node\n",
		name, r.Mode, r.Nodes, r.Networks, r.AgentsPerNetwork, r.ListenersPerNode, r.PollInterval, connect, r.NodeExtensions)
	fmt.Fprintf(w, "  networks file %.1f MB, parsed in %s by cmd/xds's parser (measured in loadgen); cmd/xds ready after %s\n",
		float64(r.FileBytes)/1e6, Secs(r.FileParse), Secs(r.XDSReady))
	fmt.Fprintf(w, "  full config, per node from its connect: %s; all %d nodes %s after the first connect; not full: %d\n",
		r.Full, r.Full.N, Secs(r.AllFull), r.NotFull)
	fmt.Fprintf(w, "  first listener set smaller than the node's networks: %d nodes (%d empty)\n", r.FewerFirst, r.EmptyFirst)
	read := "cmd/xds's next poll opened the file " + Secs(r.PollWait) + " after the write"
	if r.PollWait < 0 {
		read = "no open of the file by cmd/xds seen (times from the write)"
	}
	fmt.Fprintf(w, "  change (one network added to every node): %s; from that poll %s; every node %s after it (%s after the write); not changed: %d\n",
		read, r.Change, Secs(r.AllChanged), Secs(r.ChangeFromWrite), r.NotChanged)
	var res []string
	for _, k := range slices.Sorted(maps.Keys(r.ChangeResources)) {
		c := r.ChangeResources[k]
		res = append(res, fmt.Sprintf("%s %d (per node %d-%d)", k, c.Total, c.MinNode, c.PerNode))
	}
	fmt.Fprintf(w, "  resources received for the change: %s; removed %d\n", strings.Join(res, ", "), r.ChangeRemoved)
	fmt.Fprintf(w, "  NACKs %d, rejected updates %s, stream errors %s, problems %s\n", r.NACKs, counts(r.Rejected), counts(r.StreamErrors), counts(r.Problems))
	m := r.Mem
	fmt.Fprintf(w, "  cmd/xds RSS: %s listening, %s at /readyz, %s all full, %s after the change, peak %s\n",
		MiB(m.Listening.RSS), MiB(m.Ready.RSS), MiB(m.Full.RSS), MiB(m.Changed.RSS), MiB(m.Peak))
	for _, c := range r.CPU {
		fmt.Fprintf(w, "  CPU in the %s phase: cmd/xds %.2f s, load client %.2f s\n", c.Phase, c.XDS, c.Client)
	}
}

// WriteJSON writes r as one JSON line.
func (r XDSResult) WriteJSON(w io.Writer) error { return json.NewEncoder(w).Encode(r) }
