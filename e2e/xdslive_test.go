//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// TestXDSLiveness runs cmd/xds through an operator's bad day on the real neutron-server, with
// VMs asking for their metadata all along:
//
//  1. cmd/xds restarted while neutron-server is stopped: nothing is pushed before Neutron answers
//     again (the data plane applies no update, keeps its listeners) and no VM request fails.
//  2. a network whose qdhcp namespace appears only after its listener was pushed (the race with
//     the DHCP agent that cmd/xds cannot see in agents mode; here the networks file, which does not
//     look at namespaces either): the data plane rejects the listener, cmd/xds pushes it again with
//     back-off, and the network is served within the retry bound once the namespace exists.
func TestXDSLiveness(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	e := setup(t, ctx)
	// Nova builds metadata with Neutron calls (security groups) and answers 500 without Neutron
	// unless the instance is in its metadata cache: keep it there for the whole outage, so that the
	// failures counted are those of the proxy path (cmd/xds, Envoy, cmd/extproc's stale answers).
	if err := e.cloud.SetNovaCacheExpiration(ctx, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	a1 := e.vms["a1"]
	ownMetadata(t, a1, e.curl(t, a1, "GET", "/openstack/latest/meta_data.json", nil, nil)) // now cached by nova and extproc
	xdsListen, xdsAdmin := flagValue(e.xds.argv, "--listen"), flagValue(e.xds.argv, "--admin-listen")

	load := startVMLoad(t, []*vm{a1}, 1, 100*time.Millisecond)

	t.Run("1_xds_restarted_while_neutron_is_down_pushes_nothing_and_no_request_fails", func(t *testing.T) {
		before := e.dataplaneUpdates(t)
		e.cloud.StopNeutron()
		e.xds.stop()
		if err := e.xds.start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the data plane reconnected to the new cmd/xds", func() error {
			if !strings.Contains(lastStart(e.xds.logs()), "envoy connected") {
				return fmt.Errorf("no Envoy connected to the restarted cmd/xds yet")
			}
			return nil
		})
		waitAnswers(t, load, 10) // VMs keep asking while cmd/xds has no answer from Neutron
		if err := ready("http://" + xdsAdmin + "/readyz"); err == nil {
			t.Fatal("cmd/xds ready while neutron-server is stopped")
		}
		if got := e.dataplaneUpdates(t); !sameCounts(got, before) {
			t.Errorf("the data plane applied updates while Neutron was down: %v -> %v", before, got)
		}
		if strings.Contains(lastStart(e.xds.logs()), "snapshot set") {
			t.Error("cmd/xds set a snapshot before Neutron answered")
		}
		e.waitNetwork(t, "net-a", true)
		if err := e.cloud.StartNeutron(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, "cmd/xds ready again", func() error { return ready("http://" + xdsAdmin + "/readyz") })
		waitAnswers(t, load, 5)
		if n, fails := failures(load); len(fails) > 0 {
			t.Errorf("%d of %d VM requests failed during the restart: %v", len(fails), n, fails)
		}
	})

	t.Run("2_a_network_whose_namespace_appears_after_its_listener_was_pushed_is_served_within_the_retry_bound", func(t *testing.T) {
		n0, _ := failures(load)
		late, err := e.cloud.CreateNetwork(ctx, "net-late", "10.0.0.0/24")
		if err != nil {
			t.Fatal(err)
		}
		e.nets["net-late"] = late
		file := filepath.Join(e.dir, "networks.yaml")
		writeFile(t, file, fmt.Sprintf("nodes:\n  %s:\n    - id: %s\n    - id: %s\n", nodeID, e.nets["net-a"].ID, late.ID))
		e.xds.stop()
		fileXDS := startProc(t, e.dir, "xds-file", nil, append([]string{filepath.Join(e.bin, "xds"), "--listen", xdsListen, "--admin-listen", xdsAdmin,
			"--networks-file", file, "--metadata-agent-ini", e.ini, "--extproc-address", flagValue(e.xds.argv, "--extproc-address"),
			"--poll-interval", "1s"}, e.pki.xdsArgs()...)...)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("---- xds-file log:\n%s", tail(fileXDS.logs(), 80))
			}
		})
		eventually(t, 30*time.Second, "the listener of net-late rejected and retried", func() error {
			if logs := fileXDS.logs(); !strings.Contains(logs, "listener rejected by envoy") || !strings.Contains(logs, "network="+late.ID) {
				return fmt.Errorf("no rejection of net-late logged yet")
			}
			return nil
		})
		if _, body, err := httpGet("http://" + xdsAdmin + "/metrics"); err != nil || !strings.Contains(body, `network="`+late.ID+`"`) {
			t.Errorf("/metrics has no rejection naming network %s (err %v)", late.ID, err)
		}
		created := time.Now()
		ns, err := e.fabric.AddNetwork(ctx, vmnet.NetworkSpec{ID: late.ID, CIDR: late.CIDR, DHCPIP: late.DHCPIP, DHCPMAC: late.DHCPMAC})
		if err != nil {
			t.Fatal(err)
		}
		e.nsNs["net-late"] = ns
		// The retry bound: the back-off never waits more than 30 s; the poll adds at most 1 s.
		waitListeners(t, e.dpAdmin, 35*time.Second, "net-late served", func(names string) bool {
			return strings.Contains(names, listenerName(late))
		})
		t.Logf("net-late served %s after its namespace appeared", time.Since(created).Round(100*time.Millisecond))
		v := e.addVM(ctx, "late1", "net-late", "10.0.0.7")
		ownMetadata(t, v, e.curl(t, v, "GET", "/openstack/latest/meta_data.json", nil, nil))
		if _, body, err := httpGet("http://" + xdsAdmin + "/metrics"); err != nil || strings.Contains(body, `network="`+late.ID+`"`) {
			t.Errorf("/metrics still reports a rejection of %s after it was accepted (err %v)", late.ID, err)
		}
		waitAnswers(t, load, 5)
		if n, fails := failures(load); len(fails) > 0 {
			t.Errorf("%d of %d requests of a1 failed (%d before this scenario): %v", len(fails), n, n0, fails)
		}
	})
}

// waitAnswers waits until the load has k more answers than now.
func waitAnswers(t *testing.T, l *vmLoad, k int) {
	t.Helper()
	l.mu.Lock()
	target := len(l.res) + k
	l.mu.Unlock()
	eventually(t, 60*time.Second, fmt.Sprintf("%d more VM requests", k), func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.res) < target {
			return fmt.Errorf("%d of %d", len(l.res), target)
		}
		return nil
	})
}

// failures returns how many requests the load sent and the errors of those that failed.
func failures(l *vmLoad) (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.res {
		if a.err != "" {
			out = append(out, a.err)
		}
	}
	return len(l.res), out
}

// dataplaneUpdates returns how many updates of each type the data plane applied (the stand-in's
// /config_dump "updates"; with a real Envoy, its lds/cds update_success stats).
func (e *env) dataplaneUpdates(t *testing.T) map[string]int {
	t.Helper()
	code, body, err := httpGet("http://" + e.dpAdmin + "/config_dump")
	if err != nil || code != http.StatusOK {
		t.Fatalf("data plane /config_dump: %d %v", code, err)
	}
	var d struct {
		Updates map[string]int `json:"updates"`
	}
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		// A real Envoy's config dump has no such summary: its update_success counters instead.
		_, stats, err := httpGet("http://" + e.dpAdmin + "/stats?filter=update_success")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(stats), "\n") {
			out[line]++
		}
		return out
	}
	return d.Updates
}

func sameCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// flagValue returns the value following flag in argv ("" when absent).
func flagValue(argv []string, flag string) string {
	if i := slices.Index(argv, flag); i >= 0 && i+1 < len(argv) {
		return argv[i+1]
	}
	return ""
}

// lastStart returns the part of a proc log written since its last start.
func lastStart(logs string) string {
	if i := strings.LastIndex(logs, "---- start "); i >= 0 {
		return logs[i:]
	}
	return logs
}
