//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one of our binaries (or Envoy) running for the suite, in its own process group, with its
// output in a log file.
type proc struct {
	name string
	argv []string
	env  []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t *testing.T, dir, name string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, argv: argv, env: env, log: filepath.Join(dir, name+".log")}
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "---- start %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// exited reports whether the process ended, and how.
func (p *proc) exited() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return true, "stopped"
	}
	select {
	case <-p.done:
		return true, p.cmd.ProcessState.String()
	default:
		return false, ""
	}
}

// signal sends sig to the process itself (not its group), e.g. SIGUSR1 to soft-stop haproxy.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s is not running", p.name)
	}
	return p.cmd.Process.Signal(sig)
}

// wait waits until the process exits or timeout passes, and reports whether it exited.
func (p *proc) wait(timeout time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (p *proc) logs() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// buildBinaries builds cmd/extproc, cmd/xds and the data-plane stand-in into dir. With
// METAPROXY_E2E_BINDIR set, it links the binaries already built there instead (e.g. from another
// checkout while this one does not build).
func buildBinaries(t *testing.T, dir string) {
	t.Helper()
	if pre := os.Getenv("METAPROXY_E2E_BINDIR"); pre != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{"extproc", "xds", "standin"} {
			abs, err := filepath.Abs(filepath.Join(pre, b))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(abs, filepath.Join(dir, b)); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/extproc", "./cmd/xds", "./e2e/cmd/standin")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// eventually polls cond every 100 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// novaRequest is what the recorder saw of one request on its way to nova.
type novaRequest struct {
	Method, Path                         string
	InstanceID, TenantID, Signature, XFF []string
	// Header is every header of the request.
	Header http.Header
}

// novaRecorder sits between the data plane and nova's metadata API as a transparent HTTP/1.1
// relay and records the headers of every request, so the suite can prove that nova never
// received an unsigned request. When nova is down it closes the connection, as a dead nova would.
type novaRecorder struct {
	l    net.Listener
	nova string

	mu   sync.Mutex
	reqs []novaRequest
}

func startRecorder(t *testing.T, nova string) *novaRecorder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &novaRecorder{l: l, nova: nova}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go r.relay(c)
		}
	}()
	t.Cleanup(func() { l.Close() })
	return r
}

func (r *novaRecorder) port() int { return r.l.Addr().(*net.TCPAddr).Port }

func (r *novaRecorder) relay(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", r.nova)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { io.Copy(c, up); c.Close() }()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.reqs = append(r.reqs, novaRequest{
			Method: req.Method, Path: req.URL.Path,
			InstanceID: req.Header.Values("X-Instance-ID"), TenantID: req.Header.Values("X-Tenant-ID"),
			Signature: req.Header.Values("X-Instance-ID-Signature"), XFF: req.Header.Values("X-Forwarded-For"),
			Header: req.Header.Clone(),
		})
		r.mu.Unlock()
		if err := req.Write(up); err != nil {
			return
		}
	}
}

func (r *novaRecorder) all() []novaRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]novaRequest(nil), r.reqs...)
}

// unsigned returns every recorded request that lacks exactly one identity header of each kind.
func (r *novaRecorder) unsigned() []novaRequest {
	var bad []novaRequest
	for _, q := range r.all() {
		if len(q.InstanceID) != 1 || len(q.TenantID) != 1 || len(q.Signature) != 1 || len(q.XFF) != 1 || len(q.Signature[0]) != 64 {
			bad = append(bad, q)
		}
	}
	return bad
}

// waitListeners polls the data plane's admin /listeners until want(names) holds.
func waitListeners(t *testing.T, admin string, timeout time.Duration, what string, want func(names string) bool) {
	t.Helper()
	eventually(t, timeout, what, func() error {
		code, body, err := httpGet("http://" + admin + "/listeners")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !want(body) {
			return fmt.Errorf("listeners (%d):\n%s", code, body)
		}
		return nil
	})
}

var errNotReady = errors.New("not ready")

func ready(url string) error {
	code, body, err := httpGet(url)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%w: %d %s", errNotReady, code, bytes.TrimSpace([]byte(body)))
	}
	return nil
}
