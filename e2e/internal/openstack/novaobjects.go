//go:build e2e

package openstack

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// novaObjects talks to scripts/nova_objects.py, a long-running Python process that creates and
// deletes instance rows with nova's own objects (one JSON request and answer per line).
type novaObjects struct {
	mu    sync.Mutex
	in    io.WriteCloser
	out   *bufio.Scanner
	close func()
}

func startNovaObjects(script, conf, logPath string) (*novaObjects, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("openstack: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(Python, script, conf)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("openstack: %w", err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("openstack: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("openstack: start nova objects helper: %w", err)
	}
	marker := writeMarker(cmd.Process.Pid)
	n := &novaObjects{in: in, out: bufio.NewScanner(outPipe)}
	n.out.Buffer(make([]byte, 64<<10), 16<<20)
	n.close = sync.OnceFunc(func() {
		in.Close() // the helper exits at EOF
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if marker != "" {
			_ = os.Remove(marker)
		}
	})
	var ready struct {
		Ready bool `json:"ready"`
	}
	if err := n.read(&ready); err != nil || !ready.Ready {
		n.close()
		return nil, fmt.Errorf("openstack: nova objects helper did not start (see %s): %v", logPath, err)
	}
	return n, nil
}

// call sends one request and decodes the answer into res; the helper's error becomes the error.
func (n *novaObjects) call(req map[string]any, res any) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := n.in.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("nova objects helper: %w", err)
	}
	var raw json.RawMessage
	if err := n.read(&raw); err != nil {
		return err
	}
	var status struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &status); err != nil {
		return fmt.Errorf("nova objects helper answer: %w", err)
	}
	if !status.OK {
		return fmt.Errorf("nova objects helper: %s", status.Error)
	}
	if res != nil {
		return json.Unmarshal(raw, res)
	}
	return nil
}

func (n *novaObjects) read(v any) error {
	if !n.out.Scan() {
		if err := n.out.Err(); err != nil {
			return fmt.Errorf("nova objects helper: %w", err)
		}
		return errors.New("nova objects helper: exited")
	}
	return json.Unmarshal(n.out.Bytes(), v)
}
