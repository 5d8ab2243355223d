package serve

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/metaproxy/metaproxy/pkg/xds/source"
	"github.com/metaproxy/metaproxy/pkg/xds/translate"
)

// Poller asks a Source for the networks of every node at a fixed interval and applies the result
// to the snapshots. A source error never empties anything: the last good snapshots stay in place
// and the error is logged (Neutron being briefly unreachable must not remove every listener).
type Poller struct {
	Source    source.Source
	Shared    *translate.Shared
	Snapshots *Snapshots
	Interval  time.Duration
	Log       *slog.Logger

	ready atomic.Bool
	fails atomic.Int64
}

// Ready reports whether at least one poll has succeeded, i.e. snapshots reflect the source.
func (p *Poller) Ready() bool { return p.ready.Load() }

// Failures returns the number of polls that failed so far.
func (p *Poller) Failures() int64 { return p.fails.Load() }

// Once runs one poll.
func (p *Poller) Once(ctx context.Context) error {
	nodes, err := p.Source.Networks(ctx)
	if err != nil {
		p.fails.Add(1)
		return fmt.Errorf("read networks (keeping the last snapshots): %w", err)
	}
	if err := p.Snapshots.Apply(ctx, p.Shared, nodes); err != nil {
		p.fails.Add(1)
		return err
	}
	p.ready.Store(true)
	return nil
}

// Run polls until ctx is done, the first time immediately. It returns nil when ctx is done.
func (p *Poller) Run(ctx context.Context) error {
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if p.Interval <= 0 {
		return fmt.Errorf("poll interval %v must be positive", p.Interval)
	}
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		if err := p.Once(ctx); err != nil && ctx.Err() == nil {
			log.Error("poll failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
