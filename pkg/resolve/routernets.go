package resolve

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// DefaultRouterNetworksTTL is how long a router's networks are reused when
// NeutronOptions.RouterNetworksTTL is zero.
const DefaultRouterNetworksTTL = 10 * time.Second

// routerNetworksRecheck is the minimum age of a cached list before a lookup that finds no port
// lists the router's networks again (a network attached since would otherwise hide its VMs
// until the list expires).
const routerNetworksRecheck = time.Second

// routerNets caches the networks of each router for a TTL, one Neutron call per router at a time,
// so that router mode costs Neutron one port lookup per VM, like network mode, plus one listing
// per router and TTL. The staleness is the one the port cache already accepts for its
// (router, address) answers, and the one neutron-metadata-agent accepted when it cached router
// networks: a change of the router's interfaces is seen within the TTL (at once for a network
// attached since, see Neutron). A VM reaches a router's listener only from an attached network,
// and the port lookup itself is always fresh.
type routerNets struct {
	ttl   time.Duration
	now   func() time.Time
	group singleflight.Group

	mu      sync.Mutex
	entries map[string]routerNetsEntry
}

type routerNetsEntry struct {
	networks []string // sorted, distinct; shared, never modified
	listed   time.Time
}

func newRouterNets(ttl time.Duration, now func() time.Time) *routerNets {
	if ttl <= 0 {
		ttl = DefaultRouterNetworksTTL
	}
	return &routerNets{ttl: ttl, now: now, entries: make(map[string]routerNetsEntry)}
}

// get returns the networks of router, listing them with list unless a list younger than the TTL
// is cached (or, with minAge > 0, unless the cached list is younger than minAge: a recheck).
// listed says whether this call's list came from Neutron just now.
func (r *routerNets) get(ctx context.Context, router string, minAge time.Duration, list func(context.Context, string) ([]string, error)) (networks []string, listed bool, err error) {
	now := r.now()
	r.mu.Lock()
	e, ok := r.entries[router]
	r.mu.Unlock()
	maxAge := r.ttl
	if minAge > 0 {
		maxAge = minAge
	}
	if ok && now.Sub(e.listed) < maxAge {
		return e.networks, false, nil
	}
	v, err, _ := r.group.Do(router, func() (any, error) {
		nets, err := list(ctx, router)
		if err != nil {
			return nil, err
		}
		r.put(router, routerNetsEntry{networks: nets, listed: r.now()})
		return nets, nil
	})
	if err != nil {
		return nil, false, err
	}
	return v.([]string), true, nil
}

// put stores e, dropping expired entries once the map has grown (routers come and go).
func (r *routerNets) put(router string, e routerNetsEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.entries) >= 1024 && len(r.entries)%1024 == 0 {
		for id, old := range r.entries {
			if e.listed.Sub(old.listed) >= r.ttl {
				delete(r.entries, id)
			}
		}
	}
	r.entries[router] = e
}
