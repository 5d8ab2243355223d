package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// xdsProcess is a cmd/xds that `loadgen xds` started on a networks file, listening on loopback
// ports it chose.
type xdsProcess struct {
	cmd         *exec.Cmd
	addr, admin string // 127.0.0.1:PORT of the xDS gRPC server and of /healthz, /readyz, /metrics
	logPath     string
	started     time.Time
	done        chan struct{}
	err         error
}

// ownedXDSFlags are the cmd/xds flags `loadgen xds` sets itself; --xds-arg may not override them.
var ownedXDSFlags = []string{"source", "networks-file", "poll-interval", "listen", "admin-listen", "netns-dir"}

// checkXDSArgs refuses extra cmd/xds arguments that would change what the tool sets (and measures).
func checkXDSArgs(args []string) error {
	var errs []error
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && slices.Contains(ownedXDSFlags, name) {
			errs = append(errs, fmt.Errorf("--xds-arg %s: loadgen sets --%s itself", a, name))
		}
	}
	return errors.Join(errs...)
}

// startXDS runs bin --source file on networksFile with pollInterval, on free loopback ports, its
// output in dir/xds.log.
func startXDS(bin, dir, networksFile string, pollInterval time.Duration, extra []string) (*xdsProcess, error) {
	ports, err := freeLoopbackPorts(2)
	if err != nil {
		return nil, err
	}
	x := &xdsProcess{
		addr: fmt.Sprintf("127.0.0.1:%d", ports[0]), admin: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		logPath: filepath.Join(dir, "xds.log"), done: make(chan struct{}),
	}
	logFile, err := os.Create(x.logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"--source", "file", "--networks-file", networksFile,
		"--poll-interval", pollInterval.String(), "--listen", x.addr, "--admin-listen", x.admin,
		"--extproc-address", "unix://" + filepath.Join(dir, "extproc.sock")}, extra...)
	x.cmd = exec.Command(bin, args...)
	x.cmd.Stdout, x.cmd.Stderr = logFile, logFile
	x.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	x.started = time.Now()
	if err := x.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start cmd/xds %s: %w", bin, err)
	}
	go func() { x.err = x.cmd.Wait(); logFile.Close(); close(x.done) }()
	return x, nil
}

// freeLoopbackPorts returns n TCP ports free on 127.0.0.1 right now.
func freeLoopbackPorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (x *xdsProcess) pid() int { return x.cmd.Process.Pid }

func (x *xdsProcess) exited() bool {
	select {
	case <-x.done:
		return true
	default:
		return false
	}
}

// waitHTTP polls http://admin/path until it answers 200, the process exits or timeout passes.
func (x *xdsProcess) waitHTTP(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+x.admin+path, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-x.done:
			return fmt.Errorf("cmd/xds exited (%v); its log ends:\n%s", x.err, x.tail())
		case <-ctx.Done():
			return fmt.Errorf("cmd/xds %s not 200 after %s: %w; its log ends:\n%s", path, timeout, ctx.Err(), x.tail())
		case <-tick.C:
		}
	}
}

// readyInfo is when cmd/xds first answered /readyz (since its start) and its memory then.
type readyInfo struct {
	after time.Duration
	mem   procSample
	err   error
}

// awaitReady waits for /readyz (cmd/xds's first poll done).
func (x *xdsProcess) awaitReady(ctx context.Context, timeout time.Duration) readyInfo {
	if err := x.waitHTTP(ctx, "/readyz", timeout); err != nil {
		return readyInfo{err: err}
	}
	r := readyInfo{after: time.Since(x.started)}
	r.mem, r.err = sampleProc(x.pid())
	return r
}

// stop sends SIGTERM to cmd/xds's process group, SIGKILL after grace.
func (x *xdsProcess) stop(grace time.Duration) {
	if x.exited() {
		return
	}
	_ = syscall.Kill(-x.pid(), syscall.SIGTERM)
	select {
	case <-x.done:
	case <-time.After(grace):
		_ = syscall.Kill(-x.pid(), syscall.SIGKILL)
		<-x.done
	}
}

// tail returns the last lines of cmd/xds's log.
func (x *xdsProcess) tail() string {
	b, _ := os.ReadFile(x.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// procSample is a process's memory and CPU at one moment.
type procSample struct {
	RSS uint64  `json:"rss_bytes"` // VmRSS of /proc/PID/status
	HWM uint64  `json:"hwm_bytes"` // VmHWM: the peak RSS so far
	CPU float64 `json:"cpu_s"`     // user + system CPU so far
}

// sampleProc reads /proc/PID/status and /proc/PID/stat (pid 0: this process).
func sampleProc(pid int) (procSample, error) {
	var p procfs.Proc
	var err error
	if pid == 0 {
		p, err = procfs.Self()
	} else {
		p, err = procfs.NewProc(pid)
	}
	if err != nil {
		return procSample{}, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return procSample{}, err
	}
	stat, err := p.Stat()
	if err != nil {
		return procSample{}, err
	}
	return procSample{RSS: st.VmRSS, HWM: st.VmHWM, CPU: stat.CPUTime()}, nil
}

// fileOpens reports, on C, every time the watched file is opened (inotify IN_OPEN on its inode):
// cmd/xds's file source opens the networks file at the start of every poll.
type fileOpens struct {
	f *os.File
	C chan time.Time
}

// watchOpens watches the inode at path; it stays watched when the file is renamed.
func watchOpens(path string) (*fileOpens, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_OPEN); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", path, err)
	}
	w := &fileOpens{f: os.NewFile(uintptr(fd), "inotify"), C: make(chan time.Time, 64)}
	go w.loop()
	return w, nil
}

func (w *fileOpens) loop() {
	defer close(w.C)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		at := time.Now()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			off += unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[off+12:]))
			if mask&unix.IN_OPEN == 0 {
				continue
			}
			select {
			case w.C <- at:
			default: // nobody is waiting for that many polls
			}
		}
	}
}

// Close stops the watch.
func (w *fileOpens) Close() error { return w.f.Close() }
