package hcm

import (
	"maps"
	"sync"
)

// Stats is a set of named counters, shaped like Envoy's (http.<stat_prefix>.ext_proc.streams_failed).
type Stats struct {
	mu sync.Mutex
	m  map[string]uint64
}

// NewStats returns an empty counter set.
func NewStats() *Stats { return &Stats{m: map[string]uint64{}} }

// Inc adds one to the counter name.
func (s *Stats) Inc(name string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.m[name]++
	s.mu.Unlock()
}

// Snapshot returns a copy of every counter.
func (s *Stats) Snapshot() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.m)
}

// Get returns one counter.
func (s *Stats) Get(name string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[name]
}
