package listen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/metaproxy/metaproxy/pkg/listen/listentest"
)

// TestUnixSocketHasItsFinalModeWhenItAppears: at the moment between bind and publication the
// socket exists only inside a directory nobody else can enter, already with mode 0660, while the
// public path still shows what was there before (here nothing); once Open returns, the path is
// that socket with that mode and owner.
func TestUnixSocketHasItsFinalModeWhenItAppears(t *testing.T) {
	for name, umask := range map[string]int{"permissive umask": 0o000, "strict umask": 0o077} {
		t.Run(name, func(t *testing.T) {
			old := syscall.Umask(umask)
			defer syscall.Umask(old)
			path := filepath.Join(t.TempDir(), "extproc.sock")
			hooked := false
			u := unixSocket{beforePublish: func(tmp string) {
				hooked = true
				if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("the public path exists before the socket is ready: %v", err)
				}
				dir, err := os.Stat(filepath.Dir(tmp))
				if err != nil {
					t.Fatal(err)
				}
				if dir.Mode().Perm() != 0o700 || filepath.Dir(filepath.Dir(tmp)) != filepath.Dir(path) {
					t.Errorf("socket created in %s (mode %04o), want a private 0700 directory beside %s", filepath.Dir(tmp), dir.Mode().Perm(), path)
				}
				checkSocket(t, tmp)
			}}
			l, err := u.listen(path)
			if err != nil {
				t.Fatal(err)
			}
			if !hooked {
				t.Fatal("the socket was published without the private step")
			}
			checkSocket(t, path)
			if l.Addr().String() != path || l.Addr().Network() != "unix" {
				t.Errorf("Addr %s %s, want unix %s", l.Addr().Network(), l.Addr(), path)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("left behind in the socket's directory: %v", entries)
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial the published socket: %v", err)
			}
			c.Close()
			l.Close()
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket file left after Close: %v", err)
			}
		})
	}
}

func checkSocket(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != SocketMode || st.Uid != uint32(os.Geteuid()) || st.Gid != uint32(os.Getegid()) {
		t.Errorf("%s: mode %v owner %d:%d, want a socket %04o owned by %d:%d", path, fi.Mode(), st.Uid, st.Gid, SocketMode, os.Geteuid(), os.Getegid())
	}
}

func TestOpenReplacesAStaleSocketAtomically(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l1, err := Open("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	// A crash leaves the socket file behind: no process listens on it any more.
	l1.(*unixListener).UnixListener.Close()
	stale, _ := os.Lstat(sock)
	u := unixSocket{beforePublish: func(string) {
		if fi, err := os.Lstat(sock); err != nil || !os.SameFile(fi, stale) {
			t.Errorf("the stale socket was removed before the new one was ready (%v)", err)
		}
	}}
	l2, err := u.listen(sock)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer l2.Close()
	checkSocket(t, sock)
	// Closing the first listener now must not remove the second one's socket.
	l1.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("closing an old listener removed the new socket: %v", err)
	}
}

func TestOpenRefusesBadPaths(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o600)
	for name, tc := range map[string]struct{ addr, want string }{
		"empty":      {"unix://", "empty socket path"},
		"relative":   {"unix://run/x.sock", "absolute path"},
		"not socket": {"unix://" + regular, "is not a socket"},
		"too long":   {"unix:///" + strings.Repeat("d", 120), "longer than"},
		"no dir":     {"unix://" + filepath.Join(dir, "missing", "x.sock"), "private directory"},
	} {
		t.Run(name, func(t *testing.T) {
			l, err := Open(tc.addr)
			if err == nil {
				l.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
	if fi, _ := os.Stat(regular); fi == nil {
		t.Error("a regular file at the socket path was removed")
	}
}

// TestOpenSystemdRefusesWhatIsNotOurs: without sockets passed to this very process, the systemd
// address fails with what to do, and never takes descriptor 3 blindly. (The socket-activated start
// and restart are run for real in deploy/, TestExtprocSocketActivation.)
func TestOpenSystemdRefusesWhatIsNotOurs(t *testing.T) {
	for name, tc := range map[string]struct{ pid, fds, want string }{
		"nothing passed":       {"", "", "LISTEN_PID/LISTEN_FDS unset"},
		"another process's":    {"1", "1", "not this one"},
		"several sockets":      {strconv.Itoa(os.Getpid()), "2", "want exactly one"},
		"only the count given": {"", "1", "LISTEN_PID/LISTEN_FDS unset"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("LISTEN_PID", tc.pid)
			t.Setenv("LISTEN_FDS", tc.fds)
			l, err := Open(Systemd)
			if err == nil {
				l.Close()
				t.Fatal("listened without a socket from systemd")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if os.Getenv("LISTEN_FDS") != "" {
				t.Error("LISTEN_FDS left for child processes")
			}
		})
	}
}

func TestResolvePeers(t *testing.T) {
	ps, skipped, err := ResolvePeers([]string{"root", "0", "group:root", "user:65534", "no-such-user-here"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 4 || len(skipped) != 1 || skipped[0] != "no-such-user-here" {
		t.Fatalf("peers %v, skipped %v", ps, skipped)
	}
	if !ps.Allows(0, 1000) || !ps.Allows(1000, 0) || !ps.Allows(65534, 65534) || ps.Allows(1000, 1000) {
		t.Errorf("Allows wrong for %v", ps)
	}
	_, _, err = ResolvePeers([]string{"no-such-user-here", "group:no-such-group-here", "alien:x", "", "a b"}, false)
	for _, want := range []string{`"no-such-user-here"`, `"group:no-such-group-here"`, `"alien:x"`, `""`, `"a b"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	if _, _, err := ResolvePeers([]string{"no-such-user-here"}, true); err == nil {
		t.Error("an allow-list that lets no one in was accepted")
	}
}

// refusalCounter reads the refusal counter of reason from reader.
func refusalCounter(t *testing.T, reader *sdkmetric.ManualReader, reason string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if v, _ := dp.Attributes.Value("reason"); v.AsString() == reason {
					return dp.Value
				}
			}
		}
	}
	t.Fatalf("no refusal counter for %s", reason)
	return 0
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestCheckPeersClosesOthersBeforeReading runs a client as another user (nobody) against a socket
// whose mode would let it in (0666, as a mistaken mode or a too wide group would): the peer check
// closes the connection before the server reads a byte, logs the uid once, counts every refusal;
// allowed, the same client gets through.
func TestCheckPeersClosesOthersBeforeReading(t *testing.T) {
	sock := filepath.Join(listentest.SharedDir(t), "s.sock")
	l, err := Open("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	logs := &syncBuffer{}
	refusals, err := NewRefusals(slog.New(slog.NewTextHandler(logs, nil)), sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"), "test.refused")
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan string, 10)
	serve(CheckPeers(l, Peers{{ID: 0, Name: "root"}}, refusals), read)

	for i := range 3 {
		out, err := listentest.RunAs(t, listentest.Nobody, listentest.Nobody, "TestPeerCheckChild", "SOCK="+sock)
		if err != nil || !strings.Contains(out, "closed without an answer") {
			t.Fatalf("client %d as nobody: %v\n%s", i, err, out)
		}
	}
	select {
	case b := <-read:
		t.Fatalf("the server read %q from a refused peer", b)
	default:
	}
	if n := refusalCounter(t, reader, ReasonPeerCredentials); n != 3 {
		t.Errorf("refusals counted: %d, want 3", n)
	}
	if n := strings.Count(logs.String(), `peer="uid=65534 gid=65534"`); n != 1 {
		t.Errorf("the refused uid is logged %d times for 3 refusals within a minute, want once:\n%s", n, logs)
	}

	// The same client, allowed by uid, on a second socket.
	sock = filepath.Join(filepath.Dir(sock), "allowed.sock")
	l2, err := Open("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	os.Chmod(sock, 0o666)
	serve(CheckPeers(l2, Peers{{ID: 0, Name: "root"}, {ID: listentest.Nobody, Name: "nobody"}}, refusals), read)
	out, err := listentest.RunAs(t, listentest.Nobody, listentest.Nobody, "TestPeerCheckChild", "SOCK="+sock)
	if err != nil || !strings.Contains(out, "answered ok") {
		t.Fatalf("allowed client: %v\n%s", err, out)
	}
	if b := <-read; b != "hello" {
		t.Errorf("server read %q", b)
	}
}

// serve reads 5 bytes from every connection l accepts, sends them to read and answers "ok".
func serve(l net.Listener, read chan<- string) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 5)
			io.ReadFull(c, b)
			read <- string(b)
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
}

// TestPeerCheckChild is the client of TestCheckPeersClosesOthersBeforeReading, run as another user.
func TestPeerCheckChild(t *testing.T) {
	if !listentest.IsChild() {
		t.Skip("run by TestCheckPeersClosesOthersBeforeReading")
	}
	c, err := net.Dial("unix", os.Getenv("SOCK"))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(2)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("hello"))
	b, err := io.ReadAll(c)
	if len(b) == 0 {
		fmt.Println("closed without an answer:", err)
	} else {
		fmt.Printf("answered %s\n", b)
	}
}

func TestRefusalsLogOncePerPeerAndInterval(t *testing.T) {
	logs := &syncBuffer{}
	r, _ := NewRefusals(slog.New(slog.NewTextHandler(logs, nil)), nil, "")
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	for range 5 {
		r.Refuse("uid=1", ReasonPeerCredentials, "refused")
	}
	r.Refuse("uid=2", ReasonPeerCredentials, "refused")
	now = now.Add(logEvery)
	r.Refuse("uid=1", ReasonPeerCredentials, "refused")
	got := logs.String()
	if strings.Count(got, `peer="uid=1"`) != 2 || strings.Count(got, `peer="uid=2"`) != 1 || !strings.Contains(got, "refused_since_last_line=4") {
		t.Errorf("log:\n%s", got)
	}
}
