package serve

import (
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// A delta Envoy rejects 60 listeners at once (a fresh agent whose namespaces do not exist yet);
// its NACK names only those that fit in 4096 bytes. Every rejected listener must be pushed again.
func TestTruncatedNACKRetriesEveryListener(t *testing.T) {
	var ids []string
	for i := range 60 {
		ids = append(ids, fmt.Sprintf("%08d-1111-4111-8111-111111111111", i))
	}
	clock := &fakeClock{}
	h := startWith(t, harnessOptions{initial: source.Nodes{"n1": nets(ids...)}, poll: true, clock: clock})
	d := deltaStream(t, t.Context(), h, &corev3.Node{Id: "n1"})
	resp, ls := d.recv()
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "%s: cannot bind '169.254.169.254:80' in /var/run/netns/qdhcp-%s: No such file or directory\n", l.GetName(), ids[0])
	}
	msg := "Error adding/updating listener(s) " + b.String()
	msg = msg[:4096] + "...(truncated)" // Config::Utility::truncateGrpcStatusMessage
	d.answer(resp, msg)
	eventually(t, "the rejections", func() bool { return len(h.snaps.Rejections()) > 0 })
	if got := len(h.snaps.Rejections()); got != len(ls) {
		t.Errorf("%d of %d rejected listeners will be pushed again", got, len(ls))
	}
}
