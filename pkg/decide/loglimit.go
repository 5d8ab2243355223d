package decide

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// LogLimit bounds the "metadata request not forwarded" log lines, so that a VM retrying a failing
// request in a loop (or a storm of them) cannot flood the log. Each (network or router, VM address)
// gets a token bucket, and all of them share a global one; a line is written only when both have a
// token. Dropped lines are counted (metric MetricLogLinesSuppressed) and the next line written says
// how many were dropped before it (attribute suppressed).
type LogLimit struct {
	// PerKeyBurst lines may be written at once for one VM; then one per PerKeyEvery.
	PerKeyBurst int
	PerKeyEvery time.Duration
	// Burst lines may be written at once in total; then one per Every.
	Burst int
	Every time.Duration
	// Keys is how many VMs are remembered (least recently logged are forgotten first).
	Keys int
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// DefaultLogLimit returns the default limit: per VM 5 lines, then one every 10s; in total 50
// lines, then 20 per second; 4096 VMs remembered.
func DefaultLogLimit() LogLimit {
	return LogLimit{PerKeyBurst: 5, PerKeyEvery: 10 * time.Second, Burst: 50, Every: 50 * time.Millisecond, Keys: 4096}
}

func (l *LogLimit) setDefaults() {
	def := DefaultLogLimit()
	if l.PerKeyBurst <= 0 {
		l.PerKeyBurst = def.PerKeyBurst
	}
	if l.PerKeyEvery <= 0 {
		l.PerKeyEvery = def.PerKeyEvery
	}
	if l.Burst <= 0 {
		l.Burst = def.Burst
	}
	if l.Every <= 0 {
		l.Every = def.Every
	}
	if l.Keys <= 0 {
		l.Keys = def.Keys
	}
	if l.Now == nil {
		l.Now = time.Now
	}
}

// bucket is a token bucket refilled by one token per every, up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) take(now time.Time, burst int, every time.Duration) bool {
	b.tokens += float64(now.Sub(b.last)) / float64(every)
	if b.tokens > float64(burst) {
		b.tokens = float64(burst)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// logLimiter applies a LogLimit. It is safe for concurrent use.
type logLimiter struct {
	cfg LogLimit

	mu         sync.Mutex
	global     bucket
	keys       *lru.Cache[string, *bucket]
	suppressed uint64 // lines dropped since the last one written
}

func newLogLimiter(cfg LogLimit) *logLimiter {
	cfg.setDefaults()
	keys, _ := lru.New[string, *bucket](cfg.Keys) // only fails for a size <= 0
	return &logLimiter{cfg: cfg, keys: keys, global: bucket{tokens: float64(cfg.Burst), last: cfg.Now()}}
}

// allow says whether a line for key may be written and, if so, how many lines were dropped since
// the last one written.
func (l *logLimiter) allow(key string) (ok bool, dropped uint64) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, found := l.keys.Get(key)
	if !found {
		b = &bucket{tokens: float64(l.cfg.PerKeyBurst), last: now}
		l.keys.Add(key, b)
	}
	if !b.take(now, l.cfg.PerKeyBurst, l.cfg.PerKeyEvery) || !l.global.take(now, l.cfg.Burst, l.cfg.Every) {
		l.suppressed++
		return false, 0
	}
	dropped, l.suppressed = l.suppressed, 0
	return true, dropped
}
