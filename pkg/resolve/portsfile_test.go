package resolve

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metaproxy/metaproxy/pkg/resolve/demo"
)

func TestPortsFileDemo(t *testing.T) {
	pf, err := NewPortsData(demo.Ports())
	if err != nil {
		t.Fatal(err)
	}
	if pf.Len() != 7 {
		t.Errorf("Len() = %d, want 7", pf.Len())
	}
	onA := Scope{Kind: KindNetwork, ID: demo.NetworkA}
	onB := Scope{Kind: KindNetwork, ID: demo.NetworkB}
	viaRouter := Scope{Kind: KindRouter, ID: demo.RouterID}
	a5 := Instance{InstanceID: demo.InstanceA5, ProjectID: demo.ProjectAlice, PortID: demo.PortA5, NetworkID: demo.NetworkA}
	a6 := Instance{InstanceID: demo.InstanceA6, ProjectID: demo.ProjectAlice, PortID: demo.PortA6, NetworkID: demo.NetworkA}
	b5 := Instance{InstanceID: demo.InstanceB5, ProjectID: demo.ProjectBob, PortID: demo.PortB5, NetworkID: demo.NetworkB}
	tests := map[string]struct {
		scope         Scope
		addr          string
		want          Instance
		wantErr       error
		wantAmbiguous []string
		wantMsg       string
	}{
		"10.0.0.5 on A":                  {scope: onA, addr: "10.0.0.5", want: a5},
		"10.0.0.6 on A":                  {scope: onA, addr: "10.0.0.6", want: a6},
		"10.0.0.5 on B is another VM":    {scope: onB, addr: "10.0.0.5", want: b5},
		"10.0.0.6 is not on B":           {scope: onB, addr: "10.0.0.6", wantErr: ErrNotFound},
		"unknown address":                {scope: onA, addr: "10.0.0.9", wantErr: ErrNotFound, wantMsg: "resolve 10.0.0.9 on network " + demo.NetworkA},
		"unknown network":                {scope: Scope{Kind: KindNetwork, ID: "nope"}, addr: "10.0.0.5", wantErr: ErrNotFound},
		"ipv4-mapped":                    {scope: onA, addr: "::ffff:10.0.0.5", want: a5},
		"link-local by mac on A":         {scope: onA, addr: "fe80::f816:3eff:fe0a:5", want: a5},
		"link-local by mac on B":         {scope: onB, addr: "fe80::f816:3eff:fe0b:5", want: b5},
		"link-local mac of another net":  {scope: onA, addr: "fe80::f816:3eff:fe0b:5", wantErr: ErrNotFound},
		"link-local without EUI-64":      {scope: onA, addr: "fe80::1", wantErr: ErrNotFound, wantMsg: "not EUI-64"},
		"router: address on one network": {scope: viaRouter, addr: "10.0.0.6", want: a6},
		"router: address on both":        {scope: viaRouter, addr: "10.0.0.5", wantAmbiguous: []string{demo.PortA5, demo.PortB5}},
		"router: link-local":             {scope: viaRouter, addr: "fe80::f816:3eff:fe0b:5", want: b5},
		"router: unknown router":         {scope: Scope{Kind: KindRouter, ID: "nope"}, addr: "10.0.0.6", wantErr: ErrNotFound, wantMsg: "no interface ports"},
		"router id used as a network":    {scope: Scope{Kind: KindNetwork, ID: demo.RouterID}, addr: "10.0.0.6", wantErr: ErrNotFound},
		"network id used as a router":    {scope: Scope{Kind: KindRouter, ID: demo.NetworkA}, addr: "10.0.0.6", wantErr: ErrNotFound},
		"dhcp port mirrors neutron":      {scope: onA, addr: "10.0.0.2", want: Instance{InstanceID: "dhcp0f1c1a0e-9a4b-5c3d-8e2f-000000000001-" + demo.NetworkA, ProjectID: demo.ProjectAlice, PortID: "0a0a0002-0000-4000-8000-00000000a002", NetworkID: demo.NetworkA}},
		"second fixed ip of a port":      {scope: onB, addr: "10.0.1.2", want: Instance{InstanceID: "dhcp0f1c1a0e-9a4b-5c3d-8e2f-000000000001-" + demo.NetworkB, ProjectID: demo.ProjectBob, PortID: "0b0b0002-0000-4000-8000-00000000b002", NetworkID: demo.NetworkB}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := pf.Resolve(context.Background(), Query{Scope: tc.scope, Addr: netip.MustParseAddr(tc.addr)})
			checkResolve(t, got, err, tc.want, tc.wantErr, tc.wantAmbiguous, tc.wantMsg)
		})
	}
}

func TestDemoPortsIsACopy(t *testing.T) {
	first := demo.Ports()
	want := string(first)
	for i := range first {
		first[i] = 'x'
	}
	if got := string(demo.Ports()); got != want {
		t.Fatal("changing the slice Ports returned changed the embedded data")
	}
}

const fileNet = "net-1"

func filePortJSON(id, device, project, tenant, network, owner, mac string, ips ...string) string {
	fixed := make([]string, len(ips))
	for i, ip := range ips {
		fixed[i] = fmt.Sprintf(`{"subnet_id":"s","ip_address":%q}`, ip)
	}
	return fmt.Sprintf(`{"id":%q,"device_id":%q,"project_id":%q,"tenant_id":%q,"network_id":%q,"device_owner":%q,"mac_address":%q,"fixed_ips":[%s],"name":"ignored","status":"ACTIVE"}`,
		id, device, project, tenant, network, owner, mac, strings.Join(fixed, ","))
}

func TestPortsFileRules(t *testing.T) {
	doc := portsJSON(
		filePortJSON("p-1", "vm-1", "", "old-tenant", fileNet, "compute:nova", "FA:16:3E:00:00:01", "10.1.0.1"),
		filePortJSON("p-2", "", "proj", "proj", fileNet, "", "fa:16:3e:00:00:02", "10.1.0.2"),
		filePortJSON("p-4", "vm-4", "proj", "proj", fileNet, "compute:nova", "", "10.1.0.4", "10.1.0.4", "2001:db8::4"),
		filePortJSON("p-3b", "vm-3b", "proj", "proj", fileNet, "compute:nova", "fa:16:3e:00:00:03", "10.1.0.3"),
		filePortJSON("p-3a", "vm-3a", "proj", "proj", fileNet, "compute:nova", "fa:16:3e:00:00:03", "10.1.0.3"),
		// Router r: one HA and one DVR interface; its gateway port does not make net-gw a VM network.
		filePortJSON("r-ha", "r", "proj", "proj", fileNet, "network:ha_router_replicated_interface", "fa:16:3e:00:00:fe", "10.1.0.254"),
		filePortJSON("r-dvr", "r", "proj", "proj", "net-2", "network:router_interface_distributed", "fa:16:3e:00:01:fe", "10.2.0.254"),
		filePortJSON("r-gw", "r", "proj", "proj", "net-gw", "network:router_gateway", "fa:16:3e:00:02:fe", "192.0.2.10"),
		filePortJSON("vm-gw", "vm-gw", "proj", "proj", "net-gw", "compute:nova", "fa:16:3e:00:02:05", "192.0.2.5"),
		filePortJSON("p-7", "vm-7", "proj7", "proj7", "net-2", "compute:nova", "fa:16:3e:00:01:07", "10.2.0.7"),
	)
	pf, err := NewPortsData([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	on := Scope{Kind: KindNetwork, ID: fileNet}
	viaR := Scope{Kind: KindRouter, ID: "r"}
	tests := map[string]struct {
		scope         Scope
		addr          string
		want          Instance
		wantErr       error
		wantAmbiguous []string
		wantMsg       string
	}{
		"tenant_id fallback, upper-case mac":      {scope: on, addr: "fe80::f816:3eff:fe00:1", want: Instance{InstanceID: "vm-1", ProjectID: "old-tenant", PortID: "p-1", NetworkID: fileNet}},
		"no device_id":                            {scope: on, addr: "10.1.0.2", wantErr: ErrNotFound, wantMsg: "p-2 is not bound to an instance"},
		"repeated fixed ip is one port":           {scope: on, addr: "10.1.0.4", want: Instance{InstanceID: "vm-4", ProjectID: "proj", PortID: "p-4", NetworkID: fileNet}},
		"ipv6 fixed ip":                           {scope: on, addr: "2001:db8::4", want: Instance{InstanceID: "vm-4", ProjectID: "proj", PortID: "p-4", NetworkID: fileNet}},
		"two ports same ip, ids sorted":           {scope: on, addr: "10.1.0.3", wantAmbiguous: []string{"p-3a", "p-3b"}},
		"two ports same mac":                      {scope: on, addr: "fe80::f816:3eff:fe00:3", wantAmbiguous: []string{"p-3a", "p-3b"}},
		"router: dvr interface network":           {scope: viaR, addr: "10.2.0.7", want: Instance{InstanceID: "vm-7", ProjectID: "proj7", PortID: "p-7", NetworkID: "net-2"}},
		"router: gateway network is not searched": {scope: viaR, addr: "192.0.2.5", wantErr: ErrNotFound},
		"invalid address":                         {scope: on, addr: "", wantMsg: "no valid source address"},
		"an address of another network":           {scope: on, addr: "10.2.0.7", wantErr: ErrNotFound},
		"a mac of another network":                {scope: on, addr: "fe80::f816:3eff:fe00:107", wantErr: ErrNotFound},
		"a network the file does not have":        {scope: Scope{Kind: KindNetwork, ID: "net-x"}, addr: "10.1.0.4", wantErr: ErrNotFound},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var a netip.Addr
			if tc.addr != "" {
				a = netip.MustParseAddr(tc.addr)
			}
			got, err := pf.Resolve(context.Background(), Query{Scope: tc.scope, Addr: a})
			if tc.addr == "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %v, want %q", err, tc.wantMsg)
				}
				return
			}
			checkResolve(t, got, err, tc.want, tc.wantErr, tc.wantAmbiguous, tc.wantMsg)
		})
	}
}

func TestPortsDataInvalid(t *testing.T) {
	tests := map[string]struct {
		doc, wantMsg string
	}{
		"empty":            {doc: ``, wantMsg: "not a Neutron ports document"},
		"not json":         {doc: `<html>`, wantMsg: "not a Neutron ports document"},
		"truncated":        {doc: `{"ports":[{"id":"a"`, wantMsg: "not a Neutron ports document"},
		"no ports key":     {doc: `{"networks":[]}`, wantMsg: `no "ports" list`},
		"ports null":       {doc: `{"ports":null}`, wantMsg: `no "ports" list`},
		"trailing data":    {doc: `{"ports":[]} {"ports":[]}`, wantMsg: "data after the JSON object"},
		"port without id":  {doc: `{"ports":[{"network_id":"n"}]}`, wantMsg: "port 0 has no id"},
		"duplicate id":     {doc: `{"ports":[{"id":"a","network_id":"n"},{"id":"a","network_id":"n"}]}`, wantMsg: "port a appears twice"},
		"no network":       {doc: `{"ports":[{"id":"a"}]}`, wantMsg: "port a has no network_id"},
		"bad ip":           {doc: `{"ports":[{"id":"a","network_id":"n","fixed_ips":[{"ip_address":"10.0.0.300"}]}]}`, wantMsg: `invalid fixed ip "10.0.0.300"`},
		"bad mac":          {doc: `{"ports":[{"id":"a","network_id":"n","mac_address":"fa:16:3e"}]}`, wantMsg: `invalid mac_address "fa:16:3e"`},
		"eui-64 mac":       {doc: `{"ports":[{"id":"a","network_id":"n","mac_address":"02:00:5e:10:00:00:00:01"}]}`, wantMsg: "invalid mac_address"},
		"ports not a list": {doc: `{"ports":{}}`, wantMsg: "not a Neutron ports document"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewPortsData([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
	if pf, err := NewPortsData([]byte(`{"ports":[]}`)); err != nil || pf.Len() != 0 {
		t.Fatalf("empty ports list: %v, %v; want a resolver with no ports", pf, err)
	}
}

func TestNewPortsFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewPortsFile(filepath.Join(dir, "missing.json"), nil); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing file: err = %v, want a not-exist error", err)
	}
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, `{"ports":`, time.Unix(100, 0))
	if _, err := NewPortsFile(bad, nil); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("broken file: err = %v, want an error naming the file", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// fakeClock is a clock tests move by hand, safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeFile writes content and sets its modification time, so tests do not depend on the
// file system's timestamp granularity.
func writeFile(t *testing.T, path, content string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestPortsFileReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ports.json")
	docWith := func(device string) string {
		return portsJSON(filePortJSON("p-1", device, "proj", "proj", fileNet, "compute:nova", "fa:16:3e:00:00:01", "10.1.0.1"))
	}
	writeFile(t, path, docWith("vm-1"), time.Unix(1000, 0))

	clock := &fakeClock{}
	clock.ns.Store(time.Unix(5000, 0).UnixNano())
	logs := &syncBuffer{}
	pf, err := newPortsFile(path, slog.New(slog.NewTextHandler(logs, nil)), clock.now)
	if err != nil {
		t.Fatal(err)
	}
	q := Query{Scope: Scope{Kind: KindNetwork, ID: fileNet}, Addr: netip.MustParseAddr("10.1.0.1")}
	expect := func(t *testing.T, device string) {
		t.Helper()
		got, err := pf.Resolve(context.Background(), q)
		if err != nil {
			t.Fatalf("Resolve: %v", err)
		}
		if got.InstanceID != device {
			t.Fatalf("instance = %q, want %q", got.InstanceID, device)
		}
	}
	expect(t, "vm-1")

	// A change is not looked at before the check interval has passed.
	writeFile(t, path, docWith("vm-two"), time.Unix(1001, 0))
	clock.advance(PortsFileCheckInterval - time.Nanosecond)
	expect(t, "vm-1")
	clock.advance(time.Nanosecond)
	expect(t, "vm-two")
	if !strings.Contains(logs.String(), "ports file reloaded") {
		t.Errorf("logs = %q, want a reload line", logs.String())
	}

	// A broken file keeps the last good ports and is logged once.
	writeFile(t, path, `{"ports":[{"id":`, time.Unix(1002, 0))
	for range 3 {
		clock.advance(PortsFileCheckInterval)
		expect(t, "vm-two")
	}
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Errorf("logged %d reload failures, want 1:\n%s", n, logs.String())
	}

	// Fixed again: picked up.
	writeFile(t, path, docWith("vm-3"), time.Unix(1003, 0))
	clock.advance(PortsFileCheckInterval)
	expect(t, "vm-3")

	// Replaced by rename with the same size and modification time: the inode tells.
	tmp := filepath.Join(dir, "ports.json.tmp")
	writeFile(t, tmp, docWith("vm-4"), time.Unix(1003, 0))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	clock.advance(PortsFileCheckInterval)
	expect(t, "vm-4")

	// Removed: the last good ports stay, the problem is logged once.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(logs.String(), "reload failed")
	for range 3 {
		clock.advance(PortsFileCheckInterval)
		expect(t, "vm-4")
	}
	if n := strings.Count(logs.String(), "reload failed") - before; n != 1 {
		t.Errorf("logged %d failures for the removed file, want 1", n)
	}
}

func TestPortsFileConcurrentReload(t *testing.T) {
	// Lookups from many goroutines while the file changes under them: run with -race.
	dir := t.TempDir()
	path := filepath.Join(dir, "ports.json")
	doc := func(i int) string {
		return portsJSON(filePortJSON("p-1", fmt.Sprintf("vm-%d", i), "proj", "proj", fileNet, "compute:nova", "", "10.1.0.1"))
	}
	writeFile(t, path, doc(0), time.Unix(1000, 0))
	clock := &fakeClock{}
	pf, err := newPortsFile(path, nil, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	q := Query{Scope: Scope{Kind: KindNetwork, ID: fileNet}, Addr: netip.MustParseAddr("10.1.0.1")}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if _, err := pf.Resolve(context.Background(), q); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := 1; i <= 20; i++ {
		writeFile(t, path, doc(i), time.Unix(1000+int64(i), 0))
		clock.advance(PortsFileCheckInterval)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	clock.advance(PortsFileCheckInterval)
	got, err := pf.Resolve(context.Background(), q)
	if err != nil || got.InstanceID != "vm-20" {
		t.Fatalf("after the writes: %+v, %v; want vm-20", got, err)
	}
}

func BenchmarkPortsFileResolve(b *testing.B) {
	// 10k ports on 100 networks, through a file (the reload check is on the path).
	var ps []string
	for n := range 100 {
		for h := range 100 {
			ps = append(ps, filePortJSON(fmt.Sprintf("p-%d-%d", n, h), fmt.Sprintf("vm-%d-%d", n, h), "proj", "proj",
				fmt.Sprintf("net-%d", n), "compute:nova", fmt.Sprintf("fa:16:3e:00:%02x:%02x", n, h), fmt.Sprintf("10.0.0.%d", h+1)))
		}
	}
	path := filepath.Join(b.TempDir(), "ports.json")
	if err := os.WriteFile(path, []byte(portsJSON(ps...)), 0o600); err != nil {
		b.Fatal(err)
	}
	pf, err := NewPortsFile(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	q := Query{Scope: Scope{Kind: KindNetwork, ID: "net-42"}, Addr: netip.MustParseAddr("10.0.0.17")}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := pf.Resolve(ctx, q); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
