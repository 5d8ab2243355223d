// Package ovsctl changes and reads the Open vSwitch and OVN Southbound databases of a chassis by
// running the tools every OVN host has: ovs-vsctl for the local Open_vSwitch database (bridges,
// ports, the chassis's external_ids) and ovn-sbctl for the Southbound database (SB_Global,
// Chassis_Private). It speaks no OVSDB protocol itself: the Go module proxy refuses the Go OVSDB
// libraries, and the tools are what an operator would use by hand.
//
// Every command runs with a timeout, and ovs-vsctl with --no-wait: like neutron's agents (ovsdbapp
// transactions), nothing waits for ovs-vswitchd to apply a change. Values are read from the tools'
// --format=json output (OVSDB's JSON notation, RFC 7047 section 5.1), never scraped from text.
package ovsctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds one command when a Timeout is zero.
const DefaultTimeout = 10 * time.Second

// ErrNotFound is returned (wrapped) when a record the caller named does not exist.
var ErrNotFound = errors.New("no such record")

// tool is one command-line program with the options that select its database.
type tool struct {
	path    string
	opts    []string
	timeout time.Duration
}

func newTool(path, fallback string, opts []string, timeout time.Duration) tool {
	if path == "" {
		path = fallback
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	secs := int((timeout + time.Second - 1) / time.Second)
	return tool{path: path, opts: append(opts, "--timeout="+strconv.Itoa(secs)), timeout: timeout}
}

// run runs the tool with its options and args and returns its standard output. A failure carries
// the command line and what the tool wrote on standard error.
func (t tool) run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout+time.Second)
	defer cancel()
	argv := append(append([]string(nil), t.opts...), args...)
	cmd := exec.CommandContext(ctx, t.path, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "no row") {
			err = errors.Join(ErrNotFound, err)
		}
		return nil, fmt.Errorf("%s %s: %w: %s", t.path, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// quote writes s as an OVSDB string literal for the tools' command line (a JSON string, which is
// what their parser takes between double quotes), so that keys such as "neutron:ovn-metadata-id"
// and values with spaces or '=' survive it.
func quote(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}

// mapEntry renders column:key=value for the tools' set command.
func mapEntry(column, key, value string) string {
	return column + ":" + quote(key) + "=" + quote(value)
}
