package serve

import "time"

// Backoff is how long cmd/xds waits before it pushes again what an Envoy rejected: Base after the
// first rejection, doubling with every further one, at most Max.
type Backoff struct {
	Base, Max time.Duration
}

// DefaultBackoff waits 1 s, 2 s, 4 s ... up to 30 s: a namespace the DHCP agent creates a moment
// after its listener was pushed is served about a second later, and a listener Envoy keeps
// rejecting costs one attempt every 30 s.
var DefaultBackoff = Backoff{Base: time.Second, Max: 30 * time.Second}

// Delay returns the wait after the given number of consecutive rejections (1 for the first).
func (b Backoff) Delay(rejections int) time.Duration {
	d := b.Base
	for i := 1; i < rejections && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Clock starts the back-off timers; tests replace it to fire them when they choose.
type Clock interface {
	// AfterFunc calls f in its own goroutine after d; stop prevents that if it has not happened.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
