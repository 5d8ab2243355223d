package decide

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/metaproxy/metaproxy/pkg/answercache"
	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/sign"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLogLimiter(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := newLogLimiter(LogLimit{PerKeyBurst: 2, PerKeyEvery: 10 * time.Second, Burst: 3, Every: time.Second, Keys: 16, Now: clock.now})
	steps := []struct {
		key     string
		advance time.Duration
		ok      bool
		dropped uint64
	}{
		{key: "vm1", ok: true},
		{key: "vm1", ok: true},
		{key: "vm1", ok: false},                                      // vm1's burst is spent
		{key: "vm1", ok: false},                                      //
		{key: "vm2", ok: true, dropped: 2},                           // another VM still logs, and says what was dropped
		{key: "vm3", ok: false},                                      // the global burst (3) is spent
		{key: "vm3", advance: time.Second, ok: true, dropped: 1},     // one global token back
		{key: "vm1", advance: time.Second, ok: false},                // vm1 needs 10s for a token
		{key: "vm1", advance: 8 * time.Second, ok: true, dropped: 1}, // 10s after its last token
		{key: "vm1", advance: 0, ok: false},                          //
		{key: "vm1", advance: time.Hour, ok: true, dropped: 1},       // the bucket refills up to its burst...
		{key: "vm1", ok: true},                                       //
		{key: "vm1", ok: false},                                      // ...and no further
	}
	for i, s := range steps {
		clock.t = clock.t.Add(s.advance)
		ok, dropped := l.allow(s.key)
		if ok != s.ok || dropped != s.dropped {
			t.Fatalf("step %d (%s): allow = %v, %d dropped; want %v, %d", i, s.key, ok, dropped, s.ok, s.dropped)
		}
	}
}

// TestOneVMCannotFloodTheLog: a VM retrying a 404 in a loop gets a few lines, the rest are counted
// in the next line written.
func TestOneVMCannotFloodTheLog(t *testing.T) {
	var logs bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	s, _ := sign.New([]byte("s3cr3t"))
	d, err := New(oneVM{}, s, answercache.Options{}, slog.New(slog.NewTextHandler(&logs, nil)),
		WithLogLimit(LogLimit{PerKeyBurst: 3, PerKeyEvery: time.Minute, Now: clock.now}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.NetworkIDMetadata, "net1"))
	for range 1000 {
		d.RequestHeaders(ctx, req("10.0.0.9:1"))
	}
	if n := strings.Count(logs.String(), "metadata request not forwarded"); n != 3 {
		t.Fatalf("%d lines for 1000 requests from one VM, want 3:\n%s", n, logs.String())
	}
	// Another VM is not silenced by the first, and its line says how many were dropped.
	d.RequestHeaders(ctx, req("10.0.0.10:1"))
	last := logs.String()[strings.LastIndex(strings.TrimSpace(logs.String()), "\n")+1:]
	if !strings.Contains(last, "vm_addr=10.0.0.10") || !strings.Contains(last, fmt.Sprintf("suppressed=%d", 997)) {
		t.Errorf("last line %q, want vm 10.0.0.10 and suppressed=997", last)
	}
}
