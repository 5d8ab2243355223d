// Package answercache caches answers, not ports: in front of a resolve.Resolver it keeps, per
// (network or router, VM address), a value derived from the resolved port once per fill (for
// cmd/extproc: the instance's ids and their signature, see pkg/decide), so that the hot path neither
// resolves nor signs, and a cloud-init burst (N VMs each fetching M paths) costs Neutron at most N
// lookups per TTL. It is bounded (LRU), TTL'd and coalescing (one resolver call per key at a time).
//
// Answers are kept for TTL (positive) or NegativeTTL (no such port, several ports). When the source
// is down or overloaded (resolve.MayServeStale: unreachable, timeout, 5xx, Keystone unreachable),
// an answer younger than TTL+StaleWindow is served instead of an error, and the source is not
// asked again for RetryAfterFailure. When it is up and refuses (credentials, policy) or answers
// nonsense, no old answer is served: the address may meanwhile belong to another VM. A failure
// with nothing to stand in for it is remembered for RetryAfterFailure, so that the retries of
// every VM are not each another Neutron call.
package answercache

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unique"

	"golang.org/x/sync/singleflight"

	"github.com/metaproxy/metaproxy/pkg/resolve"
)

// Outcome says how a lookup was answered; it feeds metrics and trace attributes.
type Outcome uint8

const (
	// Hit is a fresh cached answer (a negative one, or a failure remembered for RetryAfterFailure).
	Hit Outcome = iota + 1
	// Miss asked the resolver.
	Miss
	// Coalesced waited for another caller's in-flight resolver call for the same key.
	Coalesced
	// Stale served an expired answer because the resolver was unavailable.
	Stale
)

// String returns the outcome's name as used in metrics labels.
func (o Outcome) String() string {
	switch o {
	case Hit:
		return "hit"
	case Miss:
		return "miss"
	case Coalesced:
		return "coalesced"
	case Stale:
		return "stale"
	default:
		return "unknown"
	}
}

// DefaultSize is the number of entries a Cache holds when Options.Size is not set.
const DefaultSize = 100000

// Stale window bounds: the default covers a neutron-server restart or a database failover; the cap
// bounds how old an identity may be when it is signed (TTL + StaleWindow), whatever the
// configuration says. docs/operations.md says what an operator trades.
const (
	DefaultStaleWindow = time.Minute
	MaxStaleWindow     = 10 * time.Minute
)

// DefaultRetryAfterFailure is how long a failed lookup is not retried when
// Options.RetryAfterFailure is zero: a cloud-init retry (1 s, then longer) finds the failure, not
// another Neutron call.
const DefaultRetryAfterFailure = 2 * time.Second

// Options tune a Cache. Zero values take the defaults.
type Options struct {
	TTL               time.Duration // positive answers; default 10s
	NegativeTTL       time.Duration // not found / ambiguous; default 2s
	StaleWindow       time.Duration // how long past TTL an answer may stand in for a source that is down; default DefaultStaleWindow, at most MaxStaleWindow, negative: none
	RetryAfterFailure time.Duration // after a failed refresh, serve stale or the failure without asking again for this long; default DefaultRetryAfterFailure
	Size              int           // maximum entries (LRU); default DefaultSize
	// OnEvict is called (with the cache's lock held: keep it cheap) when the LRU evicts an entry to make room.
	OnEvict func()
	// Now is the clock; tests replace it.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.TTL <= 0 {
		o.TTL = 10 * time.Second
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 2 * time.Second
	}
	switch {
	case o.StaleWindow < 0:
		o.StaleWindow = 0
	case o.StaleWindow == 0:
		o.StaleWindow = DefaultStaleWindow
	case o.StaleWindow > MaxStaleWindow:
		o.StaleWindow = MaxStaleWindow
	}
	if o.RetryAfterFailure <= 0 {
		o.RetryAfterFailure = DefaultRetryAfterFailure
	}
	if o.Size <= 0 {
		o.Size = DefaultSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Build derives the cached value from a resolved instance. It runs once per cache fill. An error
// is cached like a negative answer (for NegativeTTL) and returned to every caller meanwhile.
type Build[V any] func(q resolve.Query, inst resolve.Instance) (V, error)

// key is one (scope, address). The scope id is interned: the 100k entries of a node with a
// hundred networks share a hundred strings, not one copy each.
type key struct {
	kind resolve.Kind
	id   unique.Handle[string]
	addr netip.Addr
}

// entry is immutable once stored; a refresh replaces it. Entries are stored by value and their
// times are offsets from the cache's epoch: with 100k entries every byte counts a hundred
// thousand times. An entry may stand in for an unavailable source until expires+StaleWindow.
type entry[V any] struct {
	val V
	// err is a cached negative answer (resolve.ErrNotFound, *resolve.AmbiguousError, a Build
	// error), or a remembered failure (resolve.ErrUnavailable), which is never an answer.
	err     error
	expires time.Duration
	retryAt time.Duration // zero unless the last refresh failed
}

// Cache is a coalescing cache over a Resolver. It is safe for concurrent use.
type Cache[V any] struct {
	r     resolve.Resolver
	build Build[V]
	opt   Options
	epoch time.Time // entry times are offsets from it (monotonic when Now is time.Now)
	lru   *lru[V]
	group singleflight.Group

	waiting func() // tests: called once a caller waits on a flight (started or joined)
}

// New returns a Cache over r that stores build's result for each resolved instance.
func New[V any](r resolve.Resolver, build Build[V], opt Options) *Cache[V] {
	opt.setDefaults()
	return &Cache[V]{r: r, build: build, opt: opt, epoch: opt.Now(), lru: newLRU[V](opt.Size, opt.OnEvict)}
}

// Len returns the number of cached answers (and remembered failures).
func (c *Cache[V]) Len() int { return c.lru.len() }

// Doubt shortens q's answer to at most NegativeTTL from now: for an answer nova turned down (it
// does not know the instance the answer names, the port may be changing hands). It is not
// forgotten at once: nova answers 404 for an unknown path too, so a VM that asks for one in a loop
// gets at most one Neutron lookup per NegativeTTL, as for an address Neutron does not know.
func (c *Cache[V]) Doubt(q resolve.Query) {
	k := key{kind: q.Scope.Kind, id: unique.Make(q.Scope.ID), addr: q.Addr}
	until := c.now() + c.opt.NegativeTTL
	c.lru.update(k, func(e *entry[V]) {
		if e.err == nil && e.expires > until {
			e.expires = until
		}
	})
}

// Lookup returns the cached value for q, asking the resolver when needed. The error is the
// resolver's (possibly cached) error; errors.Is(err, resolve.ErrUnavailable) when no answer could be had.
func (c *Cache[V]) Lookup(ctx context.Context, q resolve.Query) (V, Outcome, error) {
	k := key{kind: q.Scope.Kind, id: unique.Make(q.Scope.ID), addr: q.Addr}
	now := c.now()
	e, cached := c.lru.get(k)
	if cached {
		if now < e.expires {
			return e.val, Hit, e.err
		}
		if now < e.retryAt && now < c.staleUntil(e) {
			return e.val, Stale, e.err
		}
	}

	led := false // set by the flight function, which only the caller that started the flight runs
	ch := c.group.DoChan(flightKey(k), func() (any, error) {
		led = true
		// Another flight for k may have finished between the Get above and this one starting:
		// its answer is fresh, and asking again would cost Neutron a second lookup.
		if e, ok := c.lru.peek(k); ok && c.now() < e.expires {
			return result[V]{val: e.val, outcome: Hit, err: e.err}, nil
		}
		return c.refresh(ctx, q, k), nil
	})
	if c.waiting != nil {
		c.waiting()
	}
	select {
	case res := <-ch:
		got := res.Val.(result[V])
		o := got.outcome
		if !led && o == Miss {
			o = Coalesced
		}
		return got.val, o, got.err
	case <-ctx.Done():
		var zero V
		return zero, Miss, fmt.Errorf("waiting for %s at %s: %w", q.Scope, q.Addr, ctx.Err())
	}
}

type result[V any] struct {
	val     V
	outcome Outcome
	err     error
}

// refresh asks the resolver once for everybody waiting on k. The call is detached from the first
// caller's cancellation (the resolver applies its own timeout) so one impatient VM does not fail
// the others.
func (c *Cache[V]) refresh(ctx context.Context, q resolve.Query, k key) result[V] {
	inst, err := c.r.Resolve(context.WithoutCancel(ctx), q)
	now := c.now()
	var ambiguous *resolve.AmbiguousError
	switch {
	case err == nil:
		v, err := c.build(q, inst)
		if err != nil {
			return c.negative(k, now, fmt.Errorf("%s at %s: %w", q.Scope, q.Addr, err))
		}
		e := entry[V]{val: v, expires: now + c.opt.TTL}
		c.lru.add(k, e)
		return result[V]{val: e.val, outcome: Miss}
	case errors.Is(err, resolve.ErrNotFound) || errors.As(err, &ambiguous):
		return c.negative(k, now, err)
	}
	// The source is down: fall back on a previous answer still inside its stale window.
	if old, ok := c.lru.peek(k); ok && resolve.MayServeStale(err) && isAnswer(old) && now < c.staleUntil(old) {
		held := old
		held.retryAt = now + c.opt.RetryAfterFailure
		c.lru.add(k, held)
		return result[V]{val: old.val, outcome: Stale, err: old.err}
	}
	// Nothing may stand in: remember the failure for a moment. It replaces any older answer,
	// which must not be served again when Neutron is up and refuses (it may have given the
	// address to another VM since).
	c.lru.add(k, entry[V]{err: err, expires: now + c.opt.RetryAfterFailure})
	var zero V
	return result[V]{val: zero, outcome: Miss, err: err}
}

// isAnswer reports whether e is an answer of the source (positive or negative), not a remembered
// failure.
func isAnswer[V any](e entry[V]) bool {
	return e.err == nil || !errors.Is(e.err, resolve.ErrUnavailable)
}

// negative caches err for k for NegativeTTL.
func (c *Cache[V]) negative(k key, now time.Duration, err error) result[V] {
	c.lru.add(k, entry[V]{err: err, expires: now + c.opt.NegativeTTL})
	return result[V]{outcome: Miss, err: err}
}

// staleUntil is how long e may stand in for an unavailable source.
func (c *Cache[V]) staleUntil(e entry[V]) time.Duration { return e.expires + c.opt.StaleWindow }

// now is the clock as an offset from the cache's epoch.
func (c *Cache[V]) now() time.Duration { return c.opt.Now().Sub(c.epoch) }

func flightKey(k key) string {
	return k.kind.String() + "/" + k.id.Value() + "/" + k.addr.String()
}
