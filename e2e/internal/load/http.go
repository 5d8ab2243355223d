package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/metaproxy/metaproxy/pkg/netns"
)

// HTTPOptions configures RunHTTP.
type HTTPOptions struct {
	// Namespaces are the network namespaces (names under /run/netns) the requests come from, one
	// per VM; workers are spread over them. Empty: the caller's own namespace (nova direct).
	Namespaces []string
	// URL is fetched by every request.
	URL string
	// Header is sent with every request (e.g. nova's signed headers when calling it directly).
	Header http.Header
	// Concurrency is the number of keep-alive connections, each with one request in flight.
	Concurrency int
	// Duration and Requests bound the run (whichever is reached first; at least one is required).
	Duration time.Duration
	Requests int
	// Timeout bounds one request. Zero: 30s.
	Timeout time.Duration
	// Name labels the result.
	Name string
}

// RunHTTP sends GETs over keep-alive connections (one per worker, as wrk and cloud-init's
// requests session do), closed loop, and counts every status other than 200 as an error.
func RunHTTP(ctx context.Context, o HTTPOptions) (Result, error) {
	if o.Concurrency <= 0 || o.URL == "" {
		return Result{}, errors.New("http load: concurrency and URL are required")
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	clients := make([]*http.Client, o.Concurrency)
	for w := range clients {
		ns := ""
		if len(o.Namespaces) > 0 {
			ns = o.Namespaces[w%len(o.Namespaces)]
		}
		c, err := NamespaceClient(ns, o.Timeout, true)
		if err != nil {
			return Result{}, err
		}
		defer c.CloseIdleConnections()
		clients[w] = c
		// Open the connection before the clock starts.
		if _, err := get(ctx, c, o.URL, o.Header); err != nil {
			return Result{}, fmt.Errorf("http load: first request from %q: %w", ns, err)
		}
	}
	var rec recorder
	start := time.Now()
	b, err := newBounds(start, o.Duration, o.Requests)
	if err != nil {
		return Result{}, err
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		s := rec.newSlot()
		wg.Go(func() {
			for ctx.Err() == nil && b.next() {
				t0 := time.Now()
				kind, err := get(ctx, c, o.URL, o.Header)
				d := time.Since(t0)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					kind = "transport: " + shortErr(err)
				}
				s.add(d, kind)
			}
		})
	}
	wg.Wait()
	name := o.Name
	if name == "" {
		name = "http " + o.URL
	}
	return rec.result(name, o.Concurrency, time.Since(start)), nil
}

// get fetches url and reads the whole body; kind is "" for 200, else "http <status>".
func get(ctx context.Context, c *http.Client, url string, h http.Header) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "http " + strconv.Itoa(resp.StatusCode), nil
	}
	return "", nil
}

// NamespaceClient returns an HTTP client whose connections are opened inside network namespace ns
// ("" = the caller's). A socket stays in the namespace it was created in, so only the dial runs on
// an OS thread switched into ns. keepAlive false opens a new connection per request.
func NamespaceClient(ns string, timeout time.Duration, keepAlive bool) (*http.Client, error) {
	var d net.Dialer
	dial := d.DialContext
	if ns != "" {
		path := filepath.Join("/run/netns", ns)
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(path, func() error {
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}
	}
	tr := &http.Transport{
		DialContext:         dial,
		DisableCompression:  true,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// ReadCounter sums the samples of metric (a counter, any labels) in the Prometheus text exposition
// served at url. It returns -1 and no error when url is empty.
func ReadCounter(ctx context.Context, url, metric string) (int64, error) {
	if url == "" {
		return -1, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("read counter: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("read counter %s: HTTP %d", url, resp.StatusCode)
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric) {
			continue
		}
		rest := line[len(metric):]
		if rest != "" && rest[0] != ' ' && rest[0] != '{' {
			continue // another metric with this prefix
		}
		f := strings.Fields(line[strings.LastIndexByte(line, '}')+1:])
		if strings.IndexByte(line, '}') < 0 {
			f = strings.Fields(rest)
		}
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("read counter %s: %q: %w", metric, line, err)
		}
		sum += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("read counter: no %s at %s", metric, url)
	}
	return int64(sum), nil
}
