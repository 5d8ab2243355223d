//go:build e2e

package openstack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// markerDir records the process groups this suite started, so that a later run can kill what a
// crashed or timed-out run left behind (see reapStale).
const markerDir = "/run/metaproxy-e2e/procs"

// process is one long-running child in its own process group, its output appended to a log file.
type process struct {
	name   string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // set before done is closed
	marker string
}

// startProcess starts argv in a new process group with stdout and stderr appended to logPath.
// The child is also killed if this test process dies (Pdeathsig).
func startProcess(name, logPath string, env []string, argv ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	p.marker = writeMarker(cmd.Process.Pid)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the whole process group, waits up to grace, then sends SIGKILL, and
// waits for the leader to be reaped. It is safe to call more than once.
func (p *process) stop(grace time.Duration) {
	pgid := p.cmd.Process.Pid
	if done, _ := p.exited(); !done {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// Workers may outlive their leader: the group is killed either way.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
	if p.marker != "" {
		_ = os.Remove(p.marker)
	}
}

// writeMarker records pgid with this test process as owner and the leader's start time, so that
// reapStale never kills a recycled pid. Failures only cost the crash-recovery, so they are ignored.
func writeMarker(pgid int) string {
	start, err := procStartTime(pgid)
	if err != nil || os.MkdirAll(markerDir, 0o755) != nil {
		return ""
	}
	path := filepath.Join(markerDir, strconv.Itoa(pgid))
	body := fmt.Sprintf("%d %s %s\n", os.Getpid(), start, startTimeOrEmpty(os.Getpid()))
	if os.WriteFile(path, []byte(body), 0o644) != nil {
		return ""
	}
	return path
}

func startTimeOrEmpty(pid int) string {
	s, _ := procStartTime(pid)
	return s
}

// groupMembers lists the live processes in process group pgid that started no earlier than the
// recorded leader (so a recycled group id of someone else's is left alone).
func groupMembers(pgid int, leaderStart string) []int {
	since, err := strconv.ParseUint(leaderStart, 10, 64)
	if err != nil {
		return nil
	}
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err != nil || f[2] != strconv.Itoa(pgid) {
			continue
		}
		if st, err := strconv.ParseUint(f[19], 10, 64); err == nil && st >= since {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procStartTime returns field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
func procStartTime(pid int) (string, error) {
	f, err := procStat(pid)
	if err != nil {
		return "", err
	}
	return f[19], nil
}

// procStat returns the fields of /proc/<pid>/stat after the command name: [0] state, [2] process
// group, [19] start time.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return nil, errors.New("short stat")
	}
	return f, nil
}

// reapStale kills the process groups that an earlier run of this suite started and could not stop
// (its test binary crashed or timed out), and removes their markers. It returns what it killed.
func reapStale() []string {
	entries, err := os.ReadDir(markerDir)
	if err != nil {
		return nil
	}
	var killed []string
	for _, e := range entries {
		path := filepath.Join(markerDir, e.Name())
		pgid, err := strconv.Atoi(e.Name())
		b, rerr := os.ReadFile(path)
		if err != nil || rerr != nil {
			_ = os.Remove(path)
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			_ = os.Remove(path)
			continue
		}
		owner, _ := strconv.Atoi(f[0])
		if len(f) >= 3 && owner > 0 {
			if st, err := procStartTime(owner); err == nil && st == f[2] {
				continue // its owner still runs: not ours to touch
			}
		}
		if members := groupMembers(pgid, f[1]); len(members) > 0 {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed = append(killed, fmt.Sprintf("process group %d (%d processes)", pgid, len(members)))
		}
		_ = os.Remove(path)
	}
	return killed
}
