package listen

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Reasons a connection or stream is refused, the reason attribute of the refusal metric.
const (
	// ReasonPeerCredentials: a UNIX socket peer whose uid and gid are not allowed.
	ReasonPeerCredentials = "peer_credentials"
	// ReasonTLS: a TLS handshake that failed (no client certificate, another CA, a SAN not
	// allowed, not TLS at all).
	ReasonTLS = "tls"
	// ReasonNodeID: an xDS request for a node id the client certificate does not name.
	ReasonNodeID = "node_id"
)

// logEvery is how often a peer that keeps being refused is logged again.
const logEvery = time.Minute

// Refusals logs and counts refused peers. Each peer is logged the first time, then at most once
// per logEvery with the number of refusals not logged in between, so a client retrying in a loop
// cannot flood the log; every refusal is counted. Safe for concurrent use.
type Refusals struct {
	log     *slog.Logger
	counter metric.Int64Counter // nil: not counted
	now     func() time.Time

	mu    sync.Mutex
	peers *lru.Cache[string, *peerLog]
}

type peerLog struct {
	last       time.Time
	suppressed int
}

// NewRefusals returns a Refusals that logs on log and, with a meter, counts refusals in the
// counter instrument (exported to Prometheus as <instrument with _ for .>_total{reason}).
func NewRefusals(log *slog.Logger, meter metric.Meter, instrument string) (*Refusals, error) {
	peers, _ := lru.New[string, *peerLog](4096) // only fails for a size <= 0
	r := &Refusals{log: log, now: time.Now, peers: peers}
	if meter != nil {
		c, err := meter.Int64Counter(instrument, metric.WithUnit("{connection}"),
			metric.WithDescription("Connections and streams refused before anything was served, by reason: peer_credentials, tls, node_id."))
		if err != nil {
			return nil, err
		}
		r.counter = c
		for _, reason := range []string{ReasonPeerCredentials, ReasonTLS, ReasonNodeID} {
			c.Add(context.Background(), 0, metric.WithAttributes(attribute.String("reason", reason)))
		}
	}
	return r, nil
}

// Refuse records one refusal of peer (a stable name for the client: its uid and gid, its address)
// for reason; msg and attrs describe it in the log line.
func (r *Refusals) Refuse(peer, reason, msg string, attrs ...any) {
	if r.counter != nil {
		r.counter.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", reason)))
	}
	now := r.now()
	r.mu.Lock()
	pl, seen := r.peers.Get(peer)
	if seen && now.Sub(pl.last) < logEvery {
		pl.suppressed++
		r.mu.Unlock()
		return
	}
	if !seen {
		pl = &peerLog{}
		r.peers.Add(peer, pl)
	}
	suppressed := pl.suppressed
	pl.last, pl.suppressed = now, 0
	r.mu.Unlock()
	r.log.Warn(msg, append([]any{"peer", peer, "reason", reason, "refused_since_last_line", suppressed}, attrs...)...)
}

// RefuseHandshake records a failed TLS handshake from remote: a refusal for reason tls, logged
// once per client host (tlsfiles.Server.Credentials reports to it).
func (r *Refusals) RefuseHandshake(remote net.Addr, err error) {
	host := remote.String()
	if h, _, serr := net.SplitHostPort(host); serr == nil {
		host = h
	}
	r.Refuse(host, ReasonTLS, "connection refused: TLS handshake failed", "remote", remote.String(), "error", err)
}
