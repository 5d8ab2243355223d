package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrNoHealthyUpstream is returned when a cluster has no endpoint (Envoy: "no healthy upstream").
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// Upstream is the live state of one cluster: its endpoints, an HTTP transport and, on first use,
// a gRPC connection. Endpoints are used round robin.
type Upstream struct {
	cfg       *Config
	next      atomic.Uint64
	transport *http.Transport

	grpcOnce sync.Once
	grpcConn *grpc.ClientConn
	grpcErr  error
}

// NewUpstream returns the upstream of one cluster (the Manager makes those of CDS; the
// bootstrap's static clusters are made directly).
func NewUpstream(cfg *Config) *Upstream {
	u := &Upstream{cfg: cfg}
	t := &http.Transport{
		Proxy:               nil,
		DialContext:         u.dial,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Hour,
		DisableCompression:  true,
	}
	if cfg.TLS != nil {
		t.DialTLSContext = u.dialTLS
	}
	if cfg.HTTP2 {
		var p http.Protocols
		if cfg.TLS != nil {
			p.SetHTTP2(true)
		} else {
			p.SetUnencryptedHTTP2(true)
		}
		t.Protocols = &p
	}
	u.transport = t
	return u
}

// Config returns the cluster configuration this upstream was built from.
func (u *Upstream) Config() *Config { return u.cfg }

// Scheme is the URL scheme the router uses for this upstream.
func (u *Upstream) Scheme() string {
	if u.cfg.TLS != nil {
		return "https"
	}
	return "http"
}

// Transport returns the HTTP transport of the cluster.
func (u *Upstream) Transport() http.RoundTripper { return u.transport }

func (u *Upstream) pick() (Endpoint, error) {
	eps := u.cfg.Endpoints
	if len(eps) == 0 {
		return Endpoint{}, ErrNoHealthyUpstream
	}
	return eps[int(u.next.Add(1)-1)%len(eps)], nil
}

func (u *Upstream) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	ep, err := u.pick()
	if err != nil {
		return nil, err
	}
	return dial(ctx, u.cfg, ep)
}

func (u *Upstream) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := u.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg, err := u.cfg.TLS.Config()
	if err != nil {
		c.Close()
		return nil, &ConnectError{Err: fmt.Errorf("tls context: %w", err)}
	}
	tc := tls.Client(c, cfg)
	hctx, cancel := context.WithTimeout(ctx, u.cfg.ConnectTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, &ConnectError{Err: fmt.Errorf("tls handshake: %w", err)}
	}
	return tc, nil
}

// GRPC returns the cluster's gRPC connection (Envoy gRPC client semantics: :authority is the
// cluster name, endpoints round robin, HTTP/2 with or without TLS). The TLS handshake is the
// cluster's own (dialTLS), not gRPC's credentials: those would offer ALPN h2 whatever the cluster
// says, where Envoy offers exactly its alpn_protocols, and a gRPC server refuses a TLS connection
// that negotiated none.
func (u *Upstream) GRPC() (*grpc.ClientConn, error) {
	u.grpcOnce.Do(func() {
		dial := u.dial
		if u.cfg.TLS != nil {
			dial = u.dialTLS
		}
		bc := backoff.DefaultConfig
		bc.MaxDelay = time.Second
		u.grpcConn, u.grpcErr = grpc.NewClient("passthrough:///"+u.cfg.Name,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(u.cfg.Name),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx, "", "") }),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc, MinConnectTimeout: u.cfg.ConnectTimeout}),
		)
	})
	return u.grpcConn, u.grpcErr
}

// Close closes the upstream's connections.
func (u *Upstream) Close() {
	u.transport.CloseIdleConnections()
	u.grpcOnce.Do(func() { u.grpcErr = errors.New("cluster removed") })
	if u.grpcConn != nil {
		u.grpcConn.Close()
	}
}

// Manager holds the upstreams of all clusters and swaps them when their configuration changes.
type Manager struct {
	mu  sync.RWMutex
	ups map[string]*Upstream
	key map[string]string
}

// NewManager returns an empty Manager.
func NewManager() *Manager {
	return &Manager{ups: map[string]*Upstream{}, key: map[string]string{}}
}

// Update installs cfgs (name -> config, keys say when a config changed): unchanged clusters keep
// their connections, changed and removed ones are closed.
func (m *Manager) Update(cfgs map[string]*Config, keys map[string]string) {
	m.mu.Lock()
	var stale []*Upstream
	next := make(map[string]*Upstream, len(cfgs))
	for name, cfg := range cfgs {
		if old, ok := m.ups[name]; ok && m.key[name] == keys[name] {
			next[name] = old
			continue
		}
		next[name] = NewUpstream(cfg)
	}
	for name, old := range m.ups {
		if next[name] != old {
			stale = append(stale, old)
		}
	}
	m.ups = next
	m.key = keys
	m.mu.Unlock()
	for _, u := range stale {
		u.Close()
	}
}

// Get returns the upstream of a cluster, or nil if the cluster is unknown.
func (m *Manager) Get(name string) *Upstream {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.ups[name]
}

// Close closes every upstream.
func (m *Manager) Close() {
	m.Update(nil, nil)
}
