package serve

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

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
	// Tracer records a span per poll (SpanPoll) with the source read, snapshot builds and pushes
	// as children; nil records nothing.
	Tracer trace.Tracer

	ready       atomic.Bool
	polls       atomic.Int64
	fails       atomic.Int64
	lastSuccess atomic.Int64 // Unix nanoseconds of the last successful poll; 0 before it
}

// Ready reports whether at least one poll has succeeded, i.e. snapshots reflect the source.
func (p *Poller) Ready() bool { return p.ready.Load() }

// Failures returns the number of polls that failed so far.
func (p *Poller) Failures() int64 { return p.fails.Load() }

// Polls returns the number of polls run so far, failed or not.
func (p *Poller) Polls() int64 { return p.polls.Load() }

// LastSuccess returns when the last successful poll ended (the zero time before the first).
func (p *Poller) LastSuccess() time.Time {
	ns := p.lastSuccess.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Once runs one poll.
func (p *Poller) Once(ctx context.Context) error {
	p.polls.Add(1)
	if p.Tracer == nil {
		return p.once(ctx)
	}
	ctx, span := p.Tracer.Start(ctx, SpanPoll)
	err := p.once(ctx)
	endSpan(span, err)
	return err
}

func (p *Poller) once(ctx context.Context) error {
	nodes, err := p.read(ctx)
	if err != nil {
		p.fails.Add(1)
		return fmt.Errorf("read networks (keeping the last snapshots): %w", err)
	}
	if err := p.Snapshots.Apply(ctx, p.Shared, nodes); err != nil {
		p.fails.Add(1)
		return err
	}
	p.lastSuccess.Store(time.Now().UnixNano())
	p.ready.Store(true)
	return nil
}

// read asks the source, in a SpanSourceRead span when ctx holds a recording one.
func (p *Poller) read(ctx context.Context) (source.Nodes, error) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return p.Source.Networks(ctx)
	}
	ctx, span := parent.TracerProvider().Tracer(InstrumentationName).Start(ctx, SpanSourceRead)
	nodes, err := p.Source.Networks(ctx)
	if err == nil {
		networks := 0
		for _, n := range nodes {
			networks += len(n)
		}
		span.SetAttributes(AttrNodes.Int(len(nodes)), AttrNetworks.Int(networks))
		parent.SetAttributes(AttrNodes.Int(len(nodes)), AttrNetworks.Int(networks))
	}
	endSpan(span, err)
	return nodes, err
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
